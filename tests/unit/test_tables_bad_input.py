"""Careless files below the CLI: what `kdflow.data.tables` reads right (a byte-order mark,
UTF-16, compressed CSV, compressed Parquet, CRLF, a dictionary label), what it refuses and
how (text that is not UTF-8 past the first block, a label column of lists), the split of
many small classes, and the values validation must refuse or accept (beyond float32,
numbers stored as text, booleans, decimals, long text). The CLI's one-line refusals are
in tests/pipelines/test_cli_bad_files.py."""

from __future__ import annotations

import bz2
import gzip
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdflow.data.prepared import split_frame
from kdflow.data.tables import column_counts, read_table, table_header
from kdflow.errors import DataError
from kdflow.validation.checks import validate_dataset, write_validated
from kdflow.validation.contract import default_contract
from tests.unit.validation_helpers import only

TEXT = "a,b,y\n1.5,2,0\n2.5,3,1\n3.5,4,0\n4.5,5,1\n"
EXPECTED = pd.DataFrame({"a": [1.5, 2.5, 3.5, 4.5], "b": [2, 3, 4, 5], "y": [0, 1, 0, 1]})


def _zstd(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as stream:
        stream.write(data)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bom.csv", b"\xef\xbb\xbf" + TEXT.encode()),
        ("utf16.csv", TEXT.encode("utf-16")),  # a BOM, little-endian here
        ("utf16be.csv", b"\xfe\xff" + TEXT.encode("utf-16-be")),
        ("utf32.csv", TEXT.encode("utf-32")),
        ("crlf.csv", TEXT.replace("\n", "\r\n").encode()),
        ("data.csv.gz", gzip.compress(TEXT.encode())),
        ("data.csv.bz2", bz2.compress(TEXT.encode())),
        ("data.csv.zst", _zstd(TEXT.encode())),
    ],
)
def test_csv_files_read_right(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert table_header(str(path)) == ["a", "b", "y"]
    pd.testing.assert_frame_equal(read_table(str(path)), EXPECTED, check_dtype=False)
    assert column_counts(str(path), "y")[1] == {0: 2, 1: 2}


@pytest.mark.parametrize("compression", ["zstd", "snappy", "gzip", "brotli", "none"])
def test_compressed_parquet_reads_right(tmp_path: Path, compression: str) -> None:
    path = tmp_path / "data.parquet"
    EXPECTED.to_parquet(path, compression=None if compression == "none" else compression)
    pd.testing.assert_frame_equal(read_table(str(path)), EXPECTED)


def test_a_dictionary_label_counts_as_its_values(tmp_path: Path) -> None:
    path = tmp_path / "dict.parquet"
    labels = pa.array(["cat", "dog", "cat", "cat"]).dictionary_encode()
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0, 4.0], "y": labels}), path)
    arrow_type, counts = column_counts(str(path), "y")
    assert arrow_type == pa.string() and counts == {"cat": 3, "dog": 1}


def test_text_that_is_not_utf8_past_the_first_block(tmp_path: Path) -> None:
    """pyarrow inferred the column as text from the first 4 MB; a later Latin-1 row."""
    lines = ["a,town,y"] + ["1,Bonn,0"] * 600_000 + ["2,K\xf6ln,1"]
    path = tmp_path / "late.csv"
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(DataError) as err:
        read_table(str(path))
    assert str(err.value) == (
        f"{path}: column 'town' is not UTF-8 text; save the file as UTF-8 (e.g. iconv -f "
        "cp1252 -t utf-8, or in pandas to_csv(..., encoding='utf-8'))"
    )


def test_a_duplicate_name_in_a_parquet_file(tmp_path: Path) -> None:
    path = tmp_path / "dup.parquet"
    pq.write_table(pa.table([[1.0, 2.0], [3.0, 4.0], [0, 1]], names=["a", "a", "y"]), path)
    with pytest.raises(DataError, match=r"the header names column\(s\) 'a' more than once"):
        read_table(str(path))


@pytest.mark.parametrize(
    ("values", "arrow_type"),
    [([[1], [2]], "list<element: int64>"), ([{"k": 1}, {"k": 2}], "struct<k: int64>"),
     ([b"x", b"y"], "binary")],
)
def test_a_label_column_that_holds_no_classes(tmp_path: Path, values, arrow_type) -> None:
    path = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0], "y": values}), path)
    with pytest.raises(DataError) as err:
        column_counts(str(path), "y")
    assert str(err.value) == (
        f"{path}: column 'y' holds {arrow_type} values; a label column holds classes "
        "(integers, booleans or strings)"
    )


def test_more_classes_than_the_test_part_holds_splits_unstratified() -> None:
    """15,000 classes of 2 rows: scikit-learn cannot stratify 6,000 test rows; the split
    goes unstratified and every test class is also in train."""
    frame = pd.DataFrame({"a": np.arange(30_000.0), "y": np.repeat(np.arange(15_000), 2)})
    train, test = split_frame(frame, "y", 0.2, seed=0, source="many.csv")
    assert len(train) + len(test) == 30_000 and len(test) > 0
    assert set(test["y"]) <= set(train["y"])


def _validate(tmp_path: Path, frame: pd.DataFrame | pa.Table) -> list:
    path = tmp_path / "data.parquet"
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame)
    pq.write_table(table, path)
    report = validate_dataset(str(path), None, default_contract("y"))
    return report.failures


def _frame(a: list | np.ndarray, rows: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": a, "b": rng.normal(size=rows), "y": np.arange(rows) % 2})


def test_a_value_beyond_float32_fails_validation(tmp_path: Path) -> None:
    a = np.random.default_rng(1).normal(size=40)
    a[3] = 1e39  # float32 has no such number: training would read inf
    finding = only(_validate(tmp_path, _frame(a)), "range")
    assert finding.column == "a"
    assert finding.message.startswith("a has 1 values beyond float32's range ±3.4e+38 ")
    assert finding.message.endswith(
        "of 40 rows; training reads float32, where they become infinity: rescale the column"
    )
    assert [r["row"] for r in finding.sample_rows] == [3]


def test_numbers_stored_as_text_say_so(tmp_path: Path) -> None:
    a = [f"{v:.3f}" for v in np.random.default_rng(1).normal(size=40)]
    finding = only(_validate(tmp_path, _frame(a)), "not_numeric")
    assert finding.message == (
        "a holds numbers stored as text (large_string): every value reads as a number, but kdflow "
        "takes the column's type as it is; store the column as numbers (in pandas: "
        "df[column].astype(float))"
    )


def test_text_examples_are_cut_and_not_repeated(tmp_path: Path) -> None:
    a = ["1.5"] * 40
    a[2] = a[5] = "n/a"
    a[9] = "x" * 10_000
    finding = only(_validate(tmp_path, _frame(a)), "not_numeric")
    assert finding.message == (
        "a holds large_string values, not numbers: 3 of 40 rows are not numeric (e.g. 'n/a', "
        f"'{'x' * 39}… (10,002 characters))"
    )


def test_boolean_and_decimal_features_are_numbers(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    table = pa.table({
        "flag": pa.array(rng.integers(0, 2, 40).astype(bool)),  # get_dummies' one-hot
        "price": pa.array([Decimal(f"{v:.2f}") for v in rng.uniform(1, 9, 40)],
                          pa.decimal128(6, 2)),
        "y": np.arange(40) % 2,
    })
    assert _validate(tmp_path, table) == []
    out = write_validated(str(tmp_path / "data.parquet"), tmp_path / "out.parquet",
                          default_contract("y"))
    written = pq.read_table(out)
    assert written.schema.field("flag").type == pa.float32()
    assert written.column("price").to_pylist()[0] == pytest.approx(float(table["price"][0].as_py()))


def test_an_extra_column_in_the_test_file_is_a_warning(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    train, test = tmp_path / "train.parquet", tmp_path / "test.parquet"
    _frame(rng.normal(size=40)).to_parquet(train)
    _frame(rng.normal(size=40)).assign(note="x").to_parquet(test)
    report = validate_dataset(str(train), str(test), default_contract("y"))
    assert report.failures == []
    finding = only(report.warnings, "extra_columns")
    assert finding.split == "test"
    assert finding.message == "1 column(s) not in the contract will be ignored: note"


@pytest.mark.parametrize("name", ["data.jsonl", "data.jsonl.gz"])
def test_json_lines_for_a_classifier(tmp_path: Path, name: str) -> None:
    """Preflight reads a JSON Lines table's header and counts its labels (it took them
    for Parquet before)."""
    text = EXPECTED.to_json(orient="records", lines=True).encode()
    path = tmp_path / name
    path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    assert table_header(str(path)) == ["a", "b", "y"]
    assert column_counts(str(path), "y") == (pa.int64(), {0: 2, 1: 2})
