"""The checks on the scan's exact counts: per split, and test against train."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kdflow.validation.checks import validate_frames
from kdflow.validation.contract import DataContract, default_contract
from tests.unit.validation_helpers import make_split, only


@pytest.fixture
def train() -> pd.DataFrame:
    return make_split(90, seed=1)


@pytest.fixture
def test() -> pd.DataFrame:
    return make_split(30, seed=2)


def test_nulls_above_the_allowed_fraction(train: pd.DataFrame) -> None:
    train.loc[:8, "f0"] = np.nan  # 9 of 90 rows
    report = validate_frames(train, None, DataContract(max_null_fraction=0.05))
    finding = only(report.failures, "null_fraction")
    assert finding.message == "f0 is null or NaN in 10.00% of rows; the contract allows 5.00%"
    assert finding.sample_rows[0] == {"row": 0}


def test_duplicated_rows_above_the_limit(train: pd.DataFrame) -> None:
    doubled = pd.concat([train, train.iloc[:30]], ignore_index=True)
    report = validate_frames(doubled, None, DataContract(max_duplicate_fraction=0.1))
    finding = only(report.failures, "duplicates")
    assert finding.message == (
        "30 of 120 rows (25.00%) repeat an earlier row; the contract allows 10.00%"
    )
    assert finding.sample_rows[0] == {"row": 90, "same_as_row": 0}


def test_test_rows_leaked_from_train(train: pd.DataFrame, test: pd.DataFrame) -> None:
    test.iloc[[0, 5]] = train.iloc[[12, 40]].to_numpy()
    finding = only(validate_frames(train, test, default_contract()).failures, "leakage")
    assert finding.split == "test"
    assert finding.message.startswith(
        "2 of 30 test rows (6.67%) have the same features as a training row"
    )
    assert finding.sample_rows == [
        {"test_row": 0, "train_row": 12},
        {"test_row": 5, "train_row": 40},
    ]


def test_train_test_drift(train: pd.DataFrame) -> None:
    shifted = make_split(60, seed=3)
    shifted["f0"] += 3.0
    finding = only(validate_frames(train, shifted, default_contract()).failures, "drift")
    assert finding.column == "f0"
    assert finding.observed["ks"] > 0.8
    assert "f0 drifted between train and test: KS statistic" in finding.message


def test_small_splits_do_not_raise_false_drift(train: pd.DataFrame) -> None:
    tiny = make_split(6, seed=4)
    report = validate_frames(train, tiny, DataContract(max_drift_ks=0.05))
    assert not [f for f in report.failures if f.check == "drift"]


def test_wrong_input_shape_for_the_number_of_features(train: pd.DataFrame) -> None:
    report = validate_frames(train, None, default_contract("label", input_shape=[1, 2, 2]))
    finding = only(report.failures, "input_shape")
    assert finding.message.startswith("input_shape [1, 2, 2] needs 4 features, but the data has 3")


def test_test_classes_must_be_a_subset_of_train(train: pd.DataFrame, test: pd.DataFrame) -> None:
    test.loc[0, "label"] = 5
    finding = only(validate_frames(train, test, default_contract()).failures, "test_classes")
    assert finding.message == "the test split has 1 class(es) the training split lacks: 5 (1 row)"


def test_class_balance_and_rows_per_class(train: pd.DataFrame) -> None:
    more_zeros = [make_split(30, seed, classes=(0,)) for seed in (7, 8, 9)]
    skewed = pd.concat([train, *more_zeros], ignore_index=True)  # 120 zeros, 30 ones, 30 twos
    contract = DataContract(max_class_imbalance=2.0, min_rows_per_class=40)
    report = validate_frames(skewed, None, contract)
    assert "is 4.0× the smallest" in only(report.failures, "class_imbalance").message
    assert only(report.failures, "rows_per_class").observed == {"1": 30, "2": 30}


def test_regression_targets_are_not_labels(train: pd.DataFrame) -> None:
    train["label"] = np.linspace(0, 1, len(train))
    finding = only(validate_frames(train, None, default_contract()).failures, "label_type")
    assert "kdflow needs class labels" in finding.message


def test_labels_that_are_not_classes_are_refused(train: pd.DataFrame) -> None:
    train["label"] = [[i % 3] for i in range(len(train))]
    finding = only(validate_frames(train, None, default_contract()).failures, "label_type")
    assert finding.message.startswith("the label column has type list<item: int64>")
