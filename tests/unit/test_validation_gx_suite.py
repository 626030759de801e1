"""The GX suite: run on a sample plus every flagged row, with Data Docs for both splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdflow.validation.checks import validate_dataset, validate_frames
from kdflow.validation.contract import DataContract, default_contract
from kdflow.validation.scan import ValidationSettings
from tests.unit.validation_helpers import make_split, only


@pytest.fixture
def train() -> pd.DataFrame:
    return make_split(90, seed=1)


def test_data_docs_show_both_splits_results(train: pd.DataFrame, tmp_path: Path) -> None:
    train.loc[3, "f0"] = np.nan
    test = make_split(30, seed=2)
    report = validate_frames(train, test, default_contract(), docs_dir=tmp_path / "docs")
    assert report.data_docs == tmp_path / "docs" / "index.html"
    index = report.data_docs.read_text()
    assert "kdflow_train" in index and "kdflow_test" in index
    pages = sorted((tmp_path / "docs" / "validations").rglob("*.html"))
    assert [p.parent.parent.parent.name for p in pages] == ["kdflow_test", "kdflow_train"]
    train_page = pages[1].read_text()
    assert "values must never be null" in train_page
    assert "1 unexpected values found" in train_page


def test_flagged_rows_outside_the_sample_still_fail_gx(tmp_path: Path) -> None:
    """A 4,000-row file checked by GX on 300 sampled rows still catches single bad rows."""
    frame = make_split(4000, seed=5)
    frame.loc[3777, "f1"] = np.nan
    frame.loc[2500, "label"] = 9
    path = tmp_path / "train.parquet"
    frame.to_parquet(path, row_group_size=1000)
    settings = ValidationSettings(sample_rows=300, batch_rows=512)
    report = validate_dataset(str(path), None, DataContract(classes=[0, 1, 2]), settings=settings)
    nulls = only(report.failures, "nulls")
    assert nulls.expectation == "expect_column_values_to_not_be_null"
    (example,) = nulls.sample_rows
    assert (example["row"], example["label"]) == (3777, 0) and np.isnan(example["f1"])
    assert only(report.failures, "unknown_classes").observed == {"9": 1}
    assert report.statistics["train"]["gx_rows"] == 302  # the seeded sample lacks both rows
    assert "seeded sample of at most 300 rows" in report.method
