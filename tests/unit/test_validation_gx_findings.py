"""Each failed GX expectation reads as one plain finding, with the split's exact counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdflow.validation.checks import validate_dataset, validate_frames
from kdflow.validation.contract import DataContract, FeatureSpec, default_contract
from tests.unit.validation_helpers import FEATURES, make_split, only


@pytest.fixture
def train() -> pd.DataFrame:
    return make_split(90, seed=1)


def test_label_column_missing(train: pd.DataFrame) -> None:
    report = validate_frames(train.drop(columns="label"), None, default_contract("label"))
    finding = only(report.failures, "label_column")
    assert finding.message.startswith("the label column 'label' is missing; the columns are f0")


def test_labels_with_nulls(train: pd.DataFrame) -> None:
    train["label"] = train["label"].astype("float64")
    train.loc[[4, 7], "label"] = np.nan
    finding = only(validate_frames(train, None, default_contract()).failures, "label_nulls")
    assert finding.message == "the label is null in 2 of 90 rows; every row needs a class"
    assert [r["row"] for r in finding.sample_rows] == [4, 7]


def test_class_not_in_the_contract(train: pd.DataFrame) -> None:
    train.loc[10, "label"] = 7
    report = validate_frames(train, None, DataContract(classes=[0, 1, 2]))
    finding = only(report.failures, "unknown_classes")
    assert (
        "1 class(es) not in the contract: 7 (1 row); the contract allows 0, 1, 2" in finding.message
    )
    assert finding.sample_rows == [{"row": 10, "label": 7}]


def test_one_class_only(train: pd.DataFrame) -> None:
    train["label"] = 3
    finding = only(validate_frames(train, None, default_contract()).failures, "single_class")
    assert "has 1 class(es) only (3); classification needs at least 2" in finding.message


def test_nan_and_infinities_in_features(train: pd.DataFrame) -> None:
    train.loc[5, "f0"] = np.nan
    train.loc[6, "f1"] = np.inf
    train.loc[8, "f1"] = -np.inf
    report = validate_frames(train, None, default_contract())
    nulls = only(report.failures, "nulls")
    assert nulls.column == "f0" and nulls.message.startswith(
        "f0 has 1 null or NaN values of 90 rows"
    )
    infinite = only(report.failures, "non_finite")
    assert infinite.message == "f1 has 2 infinite values (+inf: 1, -inf: 1) of 90 rows"
    assert [(r["row"], r["f1"]) for r in infinite.sample_rows] == [(6, np.inf), (8, -np.inf)]


def test_non_numeric_strings_in_a_numeric_column(train: pd.DataFrame) -> None:
    train["f2"] = train["f2"].astype(object)
    train.loc[3, "f2"] = "abc"
    train.loc[9, "f2"] = "n/a"
    finding = only(validate_frames(train, None, default_contract()).failures, "not_numeric")
    assert finding.column == "f2"
    assert "2 of 90 rows are not numeric (e.g. 'abc', 'n/a')" in finding.message
    assert [(r["row"], r["f2"]) for r in finding.sample_rows] == [(3, "abc"), (9, "n/a")]


def test_text_in_a_numeric_csv_column_is_a_failure_not_a_crash(
    tmp_path: Path, train: pd.DataFrame
) -> None:
    train["f1"] = train["f1"].astype(object)
    train.loc[88, "f1"] = "twelve"
    train.to_csv(tmp_path / "train.csv", index=False)
    report = validate_dataset(str(tmp_path / "train.csv"), None, default_contract())
    finding = only(report.failures, "not_numeric")
    assert finding.message.startswith("f1 holds string values, not numbers: 1 of 90 rows")
    assert finding.sample_rows == [{"row": 88, "label": 1, "f1": "twelve"}]


def test_a_contract_column_missing(train: pd.DataFrame) -> None:
    contract = DataContract(features={name: FeatureSpec() for name in [*FEATURES, "f9"]})
    finding = only(validate_frames(train, None, contract).failures, "missing_columns")
    assert finding.message == "1 feature column(s) of the contract are missing: f9"


def test_extra_columns_only_warn(train: pd.DataFrame) -> None:
    train["notes"] = "free text"
    contract = DataContract(features={name: FeatureSpec() for name in FEATURES})
    report = validate_frames(train, None, contract)
    assert report.passed
    assert only(report.warnings, "extra_columns").message == (
        "1 column(s) not in the contract will be ignored: notes"
    )


def test_constant_feature_warns_by_default_and_fails_when_asked(train: pd.DataFrame) -> None:
    train["f1"] = 4.0
    warned = validate_frames(train, None, default_contract())
    assert warned.passed
    assert only(warned.warnings, "constant_feature").message.startswith(
        "f1 is constant (every value is 4)"
    )
    failed = validate_frames(train, None, DataContract(on_constant_feature="fail"))
    assert only(failed.failures, "constant_feature").column == "f1"


def test_values_outside_the_contract_range(train: pd.DataFrame) -> None:
    train.loc[2, "f0"] = 50.0
    contract = DataContract(
        features={"f0": FeatureSpec(min=-10, max=10), "f1": FeatureSpec(), "f2": FeatureSpec()}
    )
    finding = only(validate_frames(train, None, contract).failures, "range")
    assert "1 values outside [-10, 10] (observed min" in finding.message
    assert finding.sample_rows[0]["row"] == 2
