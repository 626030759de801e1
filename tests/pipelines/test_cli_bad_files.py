"""Files a careless tool writes, through `kdflow run`: headers (a name twice, an empty name,
no header row, a name with spaces, another delimiter), encodings (Latin-1 in the data or
the header), formats and compression (Parquet named .csv, text named .parquet, a damaged
.gz, an empty file, an unknown suffix) and labels (one class, a regression target, a
list). Each stops in preflight: one line naming the option and the file or column, exit
code 2, no traceback, nothing started. The files kdflow reads right (compressed CSV, a
byte-order mark, UTF-16) are pinned in tests/unit/test_tables_bad_input.py."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from tests.pipelines.test_cli_errors import run_cli

ROWS = ["a,b,y"] + [f"{i * 0.5},{i % 7},{i % 2}" for i in range(40)]
GOOD = "\n".join(ROWS) + "\n"
BODY = "\n".join(ROWS[1:]) + "\n"


def _write(folder: Path, name: str, content: bytes | str) -> Path:
    path = folder / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _stopped(capsys: pytest.CaptureFixture[str], folder: Path, data: Path, *args: str) -> str:
    """`kdflow run` on `data` stopped before anything started; the line after the prefix."""
    code = main(["run", "--data", str(data), "--label-column", "y", "--output",
                 str(folder / "outputs"), "--teacher-epochs", "1", "--student-epochs", "1",
                 *args])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in err and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("kdflow run: error: "), line
    assert not (folder / "outputs").exists(), "nothing may start on a bad file"
    return line.removeprefix("kdflow run: error: ")


LATIN1 = ("a,b,y,town\n" + "".join(f"{i},{i % 5},{i % 2},{'Köln' if i == 3 else 'Bonn'}\n"
                                   for i in range(40))).encode("latin-1")
PARQUET = b"PAR1" + b"\x00" * 64


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("dup.csv", "a,a,y\n" + BODY,
         "the header names column(s) 'a' more than once; give every column its own name"),
        ("blank.csv", "a,,y\n" + BODY,
         "column 2 of the header has no name; name every column"),
        ("index.csv", ",a,y\n" + BODY,
         "column 1 of the header has no name; name every column (pandas' index? write with "
         "to_csv(..., index=False))"),
        ("head.csv", "a,b,y\n", "has a header but no rows"),
        ("empty.csv", "", "the file is empty (0 bytes)"),
        ("empty.parquet", "", "the file is empty (0 bytes)"),
        ("latin1.csv", LATIN1,
         "column 'town' is not UTF-8 text (row 4: b'K\\xf6ln', byte 0xf6 at position 1); "
         "save the file as UTF-8 (e.g. iconv -f cp1252 -t utf-8, or in pandas to_csv(..., "
         "encoding='utf-8'))"),
        ("latin1_header.csv", "gr\u00f6\u00dfe,b,y\n1,2,0\n3,4,1\n".encode("latin-1"),
         "the header is not UTF-8 text (a column name b'gr\\xf6\\xdfe', byte 0xf6 at "
         "position 2); save the file as UTF-8"),
        ("parquet.csv", PARQUET,
         "is a Parquet file, not CSV: name it *.parquet (kdflow goes by the name)"),
        ("text.parquet", GOOD,
         "not a readable Parquet file: it does not start with Parquet's PAR1 bytes (a CSV "
         "file must be named *.csv, JSON Lines *.jsonl)"),
        ("garbage.csv.gz", GOOD,
         "cannot be decompressed (damaged, or not gzip data?): zlib inflate failed"),
        ("cut.csv.gz", gzip.compress(GOOD.encode())[:-8],
         "cannot be read as CSV (the compressed file is truncated or damaged): "),
        ("data.tsv", GOOD, "not a readable Parquet file (truncated or another format?) "
         "(kdflow reads Parquet, CSV named *.csv, *.csv.gz, *.csv.bz2, *.csv.zst, or JSON"),
    ],
)
def test_a_bad_file_is_one_line_naming_it(name, content, message, tmp_path, capsys) -> None:
    data = _write(tmp_path, name, content)
    line = _stopped(capsys, tmp_path, data)
    assert line.startswith(f"--data: {data}: {message}"), line


@pytest.mark.parametrize(
    ("header", "label", "hint"),
    [
        ("a, b, y", "y", "; did you mean ' y'?"),
        ("a,b,Y", "y", "; did you mean 'Y'?"),
        ("a;b;y", "y", "; the header is one column holding semicolons: kdflow reads "
         "comma-separated CSV, so save it with commas"),
        ("a\tb\ty", "y", "; the header is one column holding tabs: kdflow reads "
         "comma-separated CSV, so save it with commas"),
        ("0.5,3,1", "y", "; every column name is a number: does the file lack a header row? "
         "The first row names the columns"),
    ],
)
def test_a_label_column_the_header_lacks_says_why(header, label, hint, tmp_path, capsys) -> None:
    separator = ";" if ";" in header else "\t" if "\t" in header else ","
    content = header + "\n" + BODY.replace(",", separator)
    data = _write(tmp_path, "data.csv", content)
    line = _stopped(capsys, tmp_path, data)
    assert line.startswith(f"--label-column: {label!r} is not a column of {data} (columns: ")
    assert line.endswith(hint), line


def test_a_file_without_a_header_row(tmp_path, capsys) -> None:
    """Its first row of numbers has a value twice: that, and why, in one line."""
    data = _write(tmp_path, "data.csv", BODY)
    assert _stopped(capsys, tmp_path, data) == (
        f"--data: {data}: the header names column(s) '0' more than once, and every name is a "
        "number: does the file lack a header row? The first row names the columns"
    )


def test_a_single_class_is_nothing_to_distill(tmp_path, capsys) -> None:
    data = _write(tmp_path, "one.csv", "a,b,y\n" + "".join(f"{i},{i},7\n" for i in range(30)))
    assert _stopped(capsys, tmp_path, data) == (
        f"--label-column: 'y' holds a single class (7) in {data}; classification (and "
        "distillation) needs at least 2 classes"
    )


@pytest.mark.parametrize("values", ["integers", "floats"])
def test_a_regression_target_as_the_label(values, tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(100_000, 900_000, 400) if values == "integers" else rng.normal(size=400)
    data = tmp_path / "prices.csv"
    pd.DataFrame({"a": rng.normal(size=400), "y": y}).to_csv(data, index=False)
    line = _stopped(capsys, tmp_path, data)
    assert line.startswith("--label-column: 'y' has ")
    assert line.endswith(
        f" distinct values in 400 rows of {data}; kdflow classifies (every value is a class), "
        "and this looks like a regression target or an ID: give the column of classes, or "
        "bin the values"
    ), line


def test_a_label_column_of_lists(tmp_path, capsys) -> None:
    data = tmp_path / "lists.parquet"
    pq.write_table(pa.table({"a": [0.5, 1.5] * 10, "y": [[1], [2]] * 10}), data)
    assert _stopped(capsys, tmp_path, data) == (
        f"--label-column: {data}: column 'y' holds list<element: int64> values; a label column "
        "holds classes (integers, booleans or strings)"
    )


def test_a_test_file_with_a_duplicate_header(tmp_path, capsys) -> None:
    data = _write(tmp_path, "data.csv", GOOD)
    test = _write(tmp_path, "test.csv", "a,b,b,y\n1,2,3,0\n")
    line = _stopped(capsys, tmp_path, data, "--test-data", str(test))
    assert line == (
        f"--test-data: {test}: the header names column(s) 'b' more than once; give every "
        "column its own name"
    )


@pytest.mark.parametrize(("header", "hint"), [("a,y", ""), ("a,B,y", "; did you mean 'B'?")])
def test_a_test_file_that_lacks_a_feature(header, hint, tmp_path, capsys) -> None:
    data = _write(tmp_path, "data.csv", GOOD)
    rows = "".join(f"{i}," * header.count(",") + f"{i % 2}\n" for i in range(10))
    test = _write(tmp_path, "test.csv", header + "\n" + rows)
    line = _stopped(capsys, tmp_path, data, "--test-data", str(test))
    assert line == (
        f"--test-data: {test} lacks feature column(s) 'b' of {data}; the models read every "
        f"feature of --data (or of --contract){hint}"
    )


def test_through_the_installed_command(tmp_path) -> None:
    """The same, as a user's shell sees it: stderr, exit code 2, no traceback."""
    data = _write(tmp_path, "data.csv.gz", b"not gzip\n" * 4)
    proc = run_cli("run", "--data", str(data), "--label-column", "y", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"kdflow run: error: --data: {data}: cannot be decompressed ")
    assert not (tmp_path / "outputs").exists()
