"""Text data: each text column checked by the scan and by GX, with readable findings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from kdflow.errors import ConfigError
from kdflow.validation.checks import validate_dataset, validate_frames, write_validated
from kdflow.validation.contract import DataContract, default_contract
from kdflow.validation.scan import ValidationSettings
from tests.unit.validation_helpers import only

WORDS = "the a cat dog sat on mat ran fast slow big small red blue green old new".split()


def make_texts(rows: int, seed: int, words: tuple[int, int] = (3, 12)) -> pd.DataFrame:
    """Distinct texts of a few words each, three classes, and a column to ignore."""
    rng = np.random.default_rng(seed)
    texts = [
        " ".join(rng.choice(WORDS, size=int(rng.integers(*words)))) + f" s{seed}r{i}"
        for i in range(rows)
    ]
    return pd.DataFrame({"text": texts, "label": [i % 3 for i in range(rows)], "id": range(rows)})


def text_contract(**kwargs: object) -> DataContract:
    return default_contract("label", text_columns=["text"], **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def train() -> pd.DataFrame:
    return make_texts(90, seed=1)


def test_a_clean_text_dataset_passes_with_length_statistics(train: pd.DataFrame) -> None:
    train["id"] = train["id"].astype(float)
    train.loc[3, "id"] = np.nan  # other columns are ignored: no null, type or range check
    train["notes"] = "free"
    report = validate_frames(train, make_texts(30, seed=2), text_contract())
    assert report.passed, report.failure_lines()
    assert {(w.check, w.split) for w in report.warnings} == {
        ("extra_columns", "train"),
        ("extra_columns", "test"),
    }
    assert report.warnings[0].message == (
        "2 column(s) besides the text and the label are ignored: id, notes"
    )
    text = report.statistics["train"]["text"]
    column = text["columns"]["text"]
    assert column["nulls"] == 0 and column["null_share"] == 0.0 and column["blank"] == 0
    assert set(column["chars"]) == set(column["words"]) == {"p50", "p95", "max"}
    assert 3 <= column["words"]["p50"] <= column["words"]["p95"] <= column["words"]["max"] <= 12
    assert column["chars"]["max"] > column["words"]["max"]
    assert text["max_length"] == 128
    assert text["rows_over_max_length"] == 0 and text["over_max_length_share"] == 0.0
    assert text["duplicate_texts"] == 0 and text["conflicting_label_texts"] == 0
    assert report.statistics["test"]["text"]["leaked_rows"] == 0
    assert report.statistics["train"]["features"] == {}  # no numeric features


def test_parquet_and_csv_text_files_pass(tmp_path: Path, train: pd.DataFrame) -> None:
    train.to_parquet(tmp_path / "train.parquet")
    make_texts(30, seed=2).to_csv(tmp_path / "test.csv", index=False)
    report = validate_dataset(
        str(tmp_path / "train.parquet"), str(tmp_path / "test.csv"), text_contract()
    )
    assert report.passed, report.failure_lines()
    assert report.rows == {"train": 90, "test": 30}
    assert report.statistics["test"]["text"]["columns"]["text"]["type"] == "string"


def test_a_missing_text_column_names_the_column_and_the_option(train: pd.DataFrame) -> None:
    report = validate_frames(train, None, default_contract("label", text_columns=["review"]))
    finding = only(report.failures, "text_column")
    assert finding.column == "review"
    assert finding.expectation == "expect_column_to_exist"
    assert finding.message == (
        "text column 'review' is missing; the columns are text, label, id: "
        "name the column of text with --text-column"
    )
    assert len(report.failures) == 1  # not also a missing_columns finding


def test_a_missing_pair_column_names_the_pair_option(train: pd.DataFrame) -> None:
    contract = default_contract("label", text_columns=["text", "hypothesis"])
    finding = only(validate_frames(train, None, contract).failures, "text_column")
    assert finding.column == "hypothesis" and "--text-pair-column" in finding.message


def test_a_numeric_text_column_is_refused(train: pd.DataFrame) -> None:
    report = validate_frames(train, None, default_contract("label", text_columns=["id"]))
    finding = only(report.failures, "text_type")
    assert finding.column == "id"
    assert finding.message.startswith("column id is numeric; --text-column needs a column of text")
    assert len(report.failures) == 1


def test_all_empty_texts_fail(tmp_path: Path, train: pd.DataFrame) -> None:
    train["text"] = ""
    finding = only(validate_frames(train, None, text_contract()).failures, "text_empty")
    assert finding.expectation == "expect_column_value_lengths_to_be_between"
    assert finding.message == (
        "text column 'text' holds no text: all 90 non-null values are empty or blank; "
        "--text-column must name a column that holds text"
    )
    train["text"] = "   "  # whitespace only: GX's length check passes, the scan does not
    train.to_csv(tmp_path / "train.csv", index=False)
    report = validate_dataset(str(tmp_path / "train.csv"), None, text_contract())
    finding = only(report.failures, "text_empty")
    assert finding.expectation is None and "all 90 non-null values" in finding.message


def test_some_empty_texts_only_warn(train: pd.DataFrame) -> None:
    train.loc[[4, 9], "text"] = ""
    report = validate_frames(train, None, text_contract())
    assert report.passed, report.failure_lines()
    finding = only(report.warnings, "text_empty")
    assert finding.message.startswith(
        "text column 'text' is empty or blank in 2 of 90 rows (2.22%)"
    )
    assert [r["row"] for r in finding.sample_rows] == [4, 9]


def test_nulls_fail_with_count_and_share(train: pd.DataFrame) -> None:
    train.loc[[5, 8], "text"] = None
    finding = only(validate_frames(train, None, text_contract()).failures, "text_nulls")
    assert finding.message == (
        "text column 'text' is null in 2 of 90 rows (2.22%); every row needs a text: "
        "drop or fill those rows"
    )
    assert finding.observed == {"nulls": 2, "share": 2 / 90}
    assert [r["row"] for r in finding.sample_rows] == [5, 8]


def test_a_mostly_null_text_column(train: pd.DataFrame) -> None:
    train.loc[:59, "text"] = None
    finding = only(validate_frames(train, None, text_contract()).failures, "text_nulls")
    assert finding.message.startswith(
        "text column 'text' is mostly null: 60 of 90 rows (66.67%) have no text; "
        "check that --text-column names the right column"
    )


def test_an_all_null_csv_column_fails_once(tmp_path: Path, train: pd.DataFrame) -> None:
    train["text"] = None
    train.to_csv(tmp_path / "train.csv", index=False)  # an all-empty CSV column reads as null
    report = validate_dataset(str(tmp_path / "train.csv"), None, text_contract())
    finding = only(report.failures, "text_nulls")
    assert finding.message == (
        "text column 'text' is null in every row (90); --text-column must name a column of text"
    )
    assert len(report.failures) == 1


def test_duplicate_texts_and_conflicting_labels_warn(train: pd.DataFrame) -> None:
    repeats = train.iloc[:12].copy()
    repeats.loc[:3, "label"] = (repeats.loc[:3, "label"] + 1) % 3  # 4 texts, another label
    frame = pd.concat([train, repeats], ignore_index=True)
    report = validate_frames(frame, None, text_contract())
    assert report.passed, report.failure_lines()
    finding = only(report.warnings, "text_duplicates")
    assert finding.message == (
        "12 of 102 rows (11.76%) repeat the text of an earlier row (column 'text'), and 4 texts "
        "appear with different labels; deduplicate the texts and fix or drop the conflicting "
        "labels"
    )
    assert finding.sample_rows[0] == {"row": 90, "same_text_as_row": 0, "label_differs": True}
    assert finding.sample_rows[4] == {"row": 94, "same_text_as_row": 4, "label_differs": False}
    text = report.statistics["train"]["text"]
    assert text["duplicate_texts"] == 12 and text["conflicting_label_texts"] == 4
    assert text["duplicate_text_share"] == pytest.approx(12 / 102)


def test_test_texts_seen_in_training_warn(tmp_path: Path, train: pd.DataFrame) -> None:
    test = make_texts(30, seed=2)
    test.loc[[0, 7, 8], "text"] = train.loc[[11, 40, 40], "text"].to_numpy()
    train.to_parquet(tmp_path / "train.parquet")
    test.to_parquet(tmp_path / "test.parquet")
    report = validate_dataset(
        str(tmp_path / "train.parquet"), str(tmp_path / "test.parquet"), text_contract()
    )
    assert report.passed, report.failure_lines()
    finding = only(report.warnings, "text_leakage")
    assert finding.split == "test" and finding.observed == 3
    assert finding.message.startswith(
        "3 of 30 test rows (10.00%) have the same text (column 'text') as a training row "
        "(2 distinct texts)"
    )
    assert finding.sample_rows[0] == {"test_row": 0, "train_row": 11}
    assert report.statistics["test"]["text"]["leaked_rows"] == 3
    assert not [f for f in report.failures if f.check == "leakage"]


def test_texts_longer_than_max_length_warn_as_a_lower_bound(train: pd.DataFrame) -> None:
    long = make_texts(90, seed=1, words=(20, 30))
    frame = pd.concat([train.iloc[:70], long.iloc[70:]], ignore_index=True)  # 20 long rows
    report = validate_frames(frame, None, text_contract(max_length=16))
    assert report.passed, report.failure_lines()
    finding = only(report.warnings, "text_truncation")
    assert finding.message == (
        "22.22% of rows (20 of 90) have more whitespace words in column 'text' than max_length "
        "16 tokens, so at least that share is truncated (a lower bound: subword tokens ≥ words); "
        "raise --max-length or shorten the texts"
    )
    text = report.statistics["train"]["text"]
    assert text["rows_over_max_length"] == 20 and text["max_length"] == 16
    few = pd.concat([train.iloc[:85], long.iloc[85:]], ignore_index=True)  # 5 of 90: no warning
    quiet = validate_frames(few, None, text_contract(max_length=16))
    assert not [w for w in quiet.warnings if w.check == "text_truncation"]
    assert quiet.statistics["train"]["text"]["over_max_length_share"] == pytest.approx(5 / 90)


def test_a_pair_counts_the_words_of_both_texts(train: pd.DataFrame) -> None:
    train["hypothesis"] = make_texts(90, seed=3, words=(6, 7))["text"]  # 7 words each
    contract = default_contract("label", text_columns=["text", "hypothesis"], max_length=10)
    report = validate_frames(train, None, contract)
    finding = only(report.warnings, "text_truncation")
    assert finding.column == "text + hypothesis"
    assert "in columns 'text' + 'hypothesis' together than max_length 10" in finding.message
    assert set(report.statistics["train"]["text"]["columns"]) == {"text", "hypothesis"}


def test_gx_sees_a_null_text_outside_its_sample(tmp_path: Path) -> None:
    frame = make_texts(3000, seed=5)
    frame.loc[2777, "text"] = None
    path = tmp_path / "train.parquet"
    frame.to_parquet(path, row_group_size=1000)
    settings = ValidationSettings(sample_rows=200, batch_rows=512)
    report = validate_dataset(str(path), None, text_contract(), tmp_path / "docs", settings)
    finding = only(report.failures, "text_nulls")
    assert finding.expectation == "expect_column_values_to_not_be_null"
    (example,) = finding.sample_rows
    assert (example["row"], example["label"]) == (2777, 2777 % 3) and pd.isna(example["text"])
    pages = list((tmp_path / "docs" / "validations").rglob("*.html"))
    assert "values must never be null" in pages[0].read_text()


def test_contract_yaml_names_its_text_columns(tmp_path: Path) -> None:
    path = tmp_path / "contract.yaml"
    path.write_text("label_column: y\ntext_columns: [premise, hypothesis]\nmax_length: 64\n")
    contract = DataContract.from_yaml(path)
    assert contract.text_columns == ["premise", "hypothesis"] and contract.max_length == 64
    assert DataContract.from_yaml(contract.to_yaml(tmp_path / "again.yaml")) == contract
    assert contract.feature_columns(["premise", "id", "y", "hypothesis"]) == [
        "premise",
        "hypothesis",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text_columns": []}, "names one column, or two for pairs"),
        ({"text_columns": ["a", "b", "c"]}, "names one column, or two for pairs"),
        ({"text_columns": ["a", "a"]}, "different, non-empty columns"),
        ({"text_columns": ["label"]}, "also listed as a text column"),
        ({"text_columns": ["a"], "input_shape": [1]}, "cannot be combined with features"),
        ({"text_columns": ["a"], "max_length": 0}, "max_length must be at least 1"),
    ],
)
def test_contract_refuses_bad_text_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DataContract(**kwargs)


def test_default_contract_for_text() -> None:
    contract = default_contract("y", input_shape=[1, 8, 8], text_columns=["t", None])
    assert contract.text_columns == ["t"] and contract.input_shape is None
    assert contract.max_length == 128 and contract.is_text
    assert default_contract("y", text_columns=["t"], max_length=32).max_length == 32
    assert not default_contract("y").is_text


def test_write_validated_keeps_the_text(tmp_path: Path, train: pd.DataFrame) -> None:
    out = write_validated(train, tmp_path / "train.parquet", text_contract())
    written = pq.read_table(out)
    assert written.schema.names == ["label", "text"]
    assert written.column("text").to_pylist() == train["text"].tolist()
