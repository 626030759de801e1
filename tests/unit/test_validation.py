"""Data validation: every bad input of the issue is caught, in plain words, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_digits

from kdflow.errors import DataError, DataValidationError
from kdflow.validation.contract import DataContract, FeatureSpec, default_contract, profile_contract
from kdflow.validation.dataset import (
    Finding,
    ValidationReport,
    ValidationSettings,
    validate_dataset,
    validate_frames,
    write_validated,
)

FEATURES = ["f0", "f1", "f2"]


def make_split(rows: int, seed: int, classes: tuple = (0, 1, 2)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, len(FEATURES))), columns=FEATURES)
    frame["label"] = [classes[i % len(classes)] for i in range(rows)]
    return frame


@pytest.fixture
def train() -> pd.DataFrame:
    return make_split(90, seed=1)


@pytest.fixture
def test() -> pd.DataFrame:
    return make_split(30, seed=2)


def only(findings: list[Finding], check: str) -> Finding:
    matching = [f for f in findings if f.check == check]
    assert len(matching) == 1, [(f.check, f.message) for f in findings]
    return matching[0]


@pytest.fixture(scope="module")
def digits_split() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = load_digits(as_frame=True).frame.rename(columns={"target": "label"})
    order = np.random.default_rng(0).permutation(len(frame))
    cut = int(0.8 * len(frame))
    return (
        frame.iloc[order[:cut]].reset_index(drop=True),
        frame.iloc[order[cut:]].reset_index(drop=True),
    )


# --------------------------------------------------------------------------- good data


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


def test_data_docs_show_both_splits_results(
    train: pd.DataFrame, test: pd.DataFrame, tmp_path: Path
) -> None:
    train.loc[3, "f0"] = np.nan
    report = validate_frames(train, test, default_contract(), docs_dir=tmp_path / "docs")
    assert report.data_docs == tmp_path / "docs" / "index.html"
    index = report.data_docs.read_text()
    assert "kdflow_train" in index and "kdflow_test" in index
    pages = sorted((tmp_path / "docs" / "validations").rglob("*.html"))
    assert [p.parent.parent.parent.name for p in pages] == ["kdflow_test", "kdflow_train"]
    train_page = pages[1].read_text()
    assert "values must never be null" in train_page
    assert "1 unexpected values found" in train_page


def test_a_fresh_split_of_the_reference_passes_its_profiled_contract(
    train: pd.DataFrame, test: pd.DataFrame
) -> None:
    reference = make_split(120, seed=6)  # per-class minimum: half of 40
    report = validate_frames(train, test, profile_contract(reference, "label"))
    assert report.passed, report.failure_lines()


def test_profiled_contract_holds_a_later_run_to_the_reference_range(train: pd.DataFrame) -> None:
    contract = profile_contract(make_split(300, seed=6), "label")
    train.loc[7, "f2"] = 40.0
    finding = only(validate_frames(train, None, contract).failures, "range")
    assert finding.column == "f2" and "observed min" in finding.message


# --------------------------------------------------------------------------- bad inputs


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


def test_values_outside_the_contract_range(train: pd.DataFrame) -> None:
    train.loc[2, "f0"] = 50.0
    contract = DataContract(
        features={"f0": FeatureSpec(min=-10, max=10), "f1": FeatureSpec(), "f2": FeatureSpec()}
    )
    finding = only(validate_frames(train, None, contract).failures, "range")
    assert "1 values outside [-10, 10] (observed min" in finding.message
    assert finding.sample_rows[0]["row"] == 2


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


# --------------------------------------------------------------------------- files


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


def test_validates_csv_and_parquet_files(
    tmp_path: Path, train: pd.DataFrame, test: pd.DataFrame
) -> None:
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_parquet(tmp_path / "test.parquet")
    report = validate_dataset(
        str(tmp_path / "train.csv"), str(tmp_path / "test.parquet"), default_contract()
    )
    assert report.passed, report.failure_lines()
    assert report.rows == {"train": 90, "test": 30}


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


# --------------------------------------------------------------------------- the report


@pytest.fixture(scope="module")
def failed_report() -> ValidationReport:
    train = make_split(90, seed=1)
    train.loc[5, "f0"] = np.inf
    train.loc[6, "label"] = 8
    return validate_frames(train, None, DataContract(classes=[0, 1, 2]))


def test_markdown_lists_each_failure_with_column_observed_value_and_rows(
    failed_report: ValidationReport,
) -> None:
    text = failed_report.to_markdown()
    assert text.startswith("# Data validation: FAILED")
    assert "## Failed checks (2)" in text
    assert (
        "- [non_finite] train · f0: f0 has 1 infinite values (+inf: 1, -inf: 0) of 90 rows" in text
    )
    assert '  - observed: `{"posinf": 1' in text
    assert "  | row | label | f0 |" in text and "  | 5 | 2 | inf |" in text


def test_json_result_is_strict_json(failed_report: ValidationReport) -> None:
    data = json.loads(json.dumps(failed_report.to_dict(), allow_nan=False))
    assert data["passed"] is False
    assert {f["check"] for f in data["failures"]} == {"non_finite", "unknown_classes"}
    assert data["statistics"]["train"]["features"]["f0"]["posinf"] == 1


def test_failure_raises_a_plain_words_error(failed_report: ValidationReport) -> None:
    assert failed_report.summary_line() == "data validation FAILED (2 failed checks): train 90 rows"
    with pytest.raises(DataValidationError) as err:
        failed_report.raise_for_failures()
    assert (
        "  - [unknown_classes] train · label: the label has 1 class(es) not in the contract"
        in str(err.value)
    )
