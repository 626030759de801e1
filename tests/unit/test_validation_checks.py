"""The entry points: files and frames validated, unreadable files refused, splits written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_digits

from kdflow.errors import DataError, DataValidationError
from kdflow.validation.checks import validate_dataset, validate_frames, write_validated
from kdflow.validation.contract import DataContract, FeatureSpec, default_contract
from tests.unit.validation_helpers import FEATURES, make_split


@pytest.fixture
def train() -> pd.DataFrame:
    return make_split(90, seed=1)


@pytest.fixture(scope="module")
def digits_split() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = load_digits(as_frame=True).frame.rename(columns={"target": "label"})
    order = np.random.default_rng(0).permutation(len(frame))
    cut = int(0.8 * len(frame))
    return (
        frame.iloc[order[:cut]].reset_index(drop=True),
        frame.iloc[order[cut:]].reset_index(drop=True),
    )


def test_digits_and_a_seeded_split_pass_the_default_contract(
    digits_split: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    train, test = digits_split
    report = validate_frames(train, test, default_contract("label", [1, 8, 8]))
    assert report.passed, report.failure_lines()
    assert report.rows == {"train": 1437, "test": 360}
    assert {w.check for w in report.warnings} == {"constant_feature"}  # e.g. pixel_0_0 is all 0
    assert report.data_docs is None
    assert len(report.dataset_hash) == 64


def test_validates_csv_and_parquet_files(tmp_path: Path, train: pd.DataFrame) -> None:
    train.to_csv(tmp_path / "train.csv", index=False)
    make_split(30, seed=2).to_parquet(tmp_path / "test.parquet")
    report = validate_dataset(
        str(tmp_path / "train.csv"), str(tmp_path / "test.parquet"), default_contract()
    )
    assert report.passed, report.failure_lines()
    assert report.rows == {"train": 90, "test": 30}


def test_unreadable_file_is_a_data_error_not_a_report(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        validate_dataset(str(tmp_path / "absent.parquet"), None, default_contract())


def test_write_validated_normalises_dtypes_and_drops_other_columns(
    tmp_path: Path, train: pd.DataFrame
) -> None:
    train["notes"] = "x"
    train["f1"] = np.arange(len(train))  # integers become float32 too
    train.to_csv(tmp_path / "train.csv", index=False)
    contract = DataContract(features={name: FeatureSpec() for name in FEATURES})
    out = write_validated(str(tmp_path / "train.csv"), tmp_path / "out" / "train.parquet", contract)
    written = pq.read_table(out)
    assert written.schema.names == ["label", "f0", "f1", "f2"]
    assert [str(t) for t in written.schema.types] == ["int64", "float", "float", "float"]
    assert written.column("f1").to_pylist()[:3] == [0.0, 1.0, 2.0]
    assert written.num_rows == 90


def test_write_validated_names_the_missing_columns(tmp_path: Path, train: pd.DataFrame) -> None:
    contract = DataContract(features={name: FeatureSpec() for name in [*FEATURES, "f9"]})
    with pytest.raises(
        DataValidationError, match="cannot write the validated split: missing columns f9"
    ):
        write_validated(train, tmp_path / "train.parquet", contract)
