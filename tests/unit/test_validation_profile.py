"""Profiled contracts: what a trusted reference holds, widened so that fresh data passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from kdflow.errors import DataError
from kdflow.validation.checks import validate_frames
from kdflow.validation.profile import profile_contract, profile_dataset
from tests.unit.validation_helpers import make_split, only


@pytest.fixture(scope="module")
def digits() -> pd.DataFrame:
    return load_digits(as_frame=True).frame.rename(columns={"target": "label"})


@pytest.fixture
def train() -> pd.DataFrame:
    return make_split(90, seed=1)


def test_profile_of_digits_widens_ranges_and_keeps_classes(digits: pd.DataFrame) -> None:
    contract = profile_contract(digits, "label", input_shape=[1, 8, 8])
    assert contract.classes == list(range(10))
    assert contract.features is not None and len(contract.features) == 64
    pixel = contract.features["pixel_3_3"]
    assert pixel.dtype == "float" and pixel.min is not None and pixel.max is not None
    assert (pixel.min, pixel.max) == (-8.0, 24.0)  # 0..16 widened by half the range
    assert 1.0 < contract.max_class_imbalance < 2.0
    assert contract.min_rows_per_class == digits["label"].value_counts().min() // 2
    assert contract.on_constant_feature == "warn"  # pixel_0_0 is always 0


def test_profile_allows_observed_nulls_with_slack() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=100), "label": [0, 1] * 50})
    frame.loc[:9, "a"] = np.nan
    contract = profile_contract(frame)
    assert contract.features is not None
    assert contract.features["a"].max_null_fraction == pytest.approx(0.15)
    assert contract.on_constant_feature == "fail"


def test_profile_refuses_a_reference_with_null_labels() -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "label": [0, 1, None]})
    with pytest.raises(DataError, match="cannot profile a contract.*1 nulls"):
        profile_contract(frame)


def test_profile_refuses_a_reference_with_text_or_infinite_features() -> None:
    frame = pd.DataFrame(
        {"a": ["x", "y", "z", "w"], "b": [1.0, np.inf, 2.0, 3.0], "label": [0, 1, 0, 1]}
    )
    with pytest.raises(
        DataError,
        match=r"^reference: cannot profile a contract from it: a is not numeric \(\w*string\); "
        "b has non-finite values$",
    ):
        profile_contract(frame)


def test_profile_from_a_file_equals_profile_from_the_frame(
    tmp_path: Path, digits: pd.DataFrame
) -> None:
    path = tmp_path / "digits.parquet"
    digits.to_parquet(path)
    assert profile_dataset(str(path), "label") == profile_contract(digits, "label")


def test_a_fresh_split_of_the_reference_passes_its_profiled_contract(train: pd.DataFrame) -> None:
    reference = make_split(120, seed=6)  # per-class minimum: half of 40
    report = validate_frames(train, make_split(30, seed=2), profile_contract(reference, "label"))
    assert report.passed, report.failure_lines()


def test_profiled_contract_holds_a_later_run_to_the_reference_range(train: pd.DataFrame) -> None:
    contract = profile_contract(make_split(300, seed=6), "label")
    train.loc[7, "f2"] = 40.0
    finding = only(validate_frames(train, None, contract).failures, "range")
    assert finding.column == "f2" and "observed min" in finding.message
