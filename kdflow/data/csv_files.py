"""What a careless tool writes into a CSV file, found before it misleads a run.

`kdflow.data.tables` reads CSV with pyarrow; this module looks at the file's first bytes
and its header for what pyarrow would read without complaint but wrongly:

- the encoding: UTF-8 (with or without a byte-order mark) is read as is, UTF-16 and
  UTF-32 with a byte-order mark (what Excel's "Unicode text" and PowerShell write) are
  decoded by pyarrow's own transcoding (`ReadOptions(encoding=...)`); anything else that
  is not UTF-8 (Latin-1, cp1252) is an error naming the column and the row, since pyarrow
  would read those columns as bytes;
- a Parquet file named `*.csv`;
- a header with a column name twice, an empty one, or one that is not UTF-8.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.fs as pa_fs

from kdflow.errors import DataError

PARQUET_MAGIC = b"PAR1"
_BOMS = (  # longest first: UTF-32 LE starts with UTF-16 LE's mark
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)
_RECODE = "e.g. iconv -f cp1252 -t utf-8, or in pandas to_csv(..., encoding='utf-8')"


def file_head(filesystem: pa_fs.FileSystem, path: str, uri: str, size: int = 4) -> bytes:
    """The first `size` bytes of a file, decompressed when its name says it is compressed
    (.gz, .bz2, .zst); a compressed file that does not decompress is a DataError."""
    try:
        with filesystem.open_input_stream(path, compression="detect") as stream:
            return bytes(stream.read(size))
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{uri}: cannot be decompressed (damaged, or not {_codec(path)} data?): "
                        f"{exc}") from exc


def csv_read_options(head: bytes, uri: str, block_size: int) -> pa_csv.ReadOptions:
    """pyarrow's read options for a CSV file that starts with `head`: its encoding from a
    byte-order mark (UTF-8's pyarrow skips itself). A Parquet file is refused."""
    if head.startswith(PARQUET_MAGIC):
        raise DataError(
            f"{uri}: is a Parquet file, not CSV: name it *.parquet (kdflow goes by the name)"
        )
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return pa_csv.ReadOptions(block_size=block_size, encoding=encoding)
    return pa_csv.ReadOptions(block_size=block_size)


def header_names(schema: pa.Schema, uri: str) -> list[str]:
    """The column names of a CSV file's header, checked: every column named, once, in
    UTF-8 (pyarrow reads names of other bytes but cannot give them as text)."""
    try:
        names = list(schema.names)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{uri}: the header is not UTF-8 text (a column name {exc.object[:40]!r}, byte "
            f"0x{exc.object[exc.start]:02x} at position {exc.start}); save the file as UTF-8 "
            f"({_RECODE})"
        ) from None
    check_header(names, uri)
    return names


def check_header(names: list[str], uri: str) -> None:
    """A header pyarrow reads but kdflow cannot use: a column name twice, or an empty one."""
    twice = [name for name, n in Counter(names).items() if n > 1]
    if twice:
        shown = ", ".join(repr(n) for n in twice[:5])
        if all(is_number(n) for n in names):
            raise DataError(
                f"{uri}: the header names column(s) {shown} more than once, and every name is "
                "a number: does the file lack a header row? The first row names the columns"
            )
        raise DataError(
            f"{uri}: the header names column(s) {shown} more than once; give every column "
            "its own name"
        )
    for number, name in enumerate(names, start=1):
        if not name.strip():
            hint = " (pandas' index? write with to_csv(..., index=False))" if number == 1 else ""
            raise DataError(f"{uri}: column {number} of the header has no name; name every "
                            f"column{hint}")


def check_utf8(batch: pa.RecordBatch, offset: int, uri: str) -> None:
    """pyarrow reads a CSV column that is not valid UTF-8 as bytes (binary): an error
    naming the column, the first such row (1 is the first row after the header) and the
    byte that is not UTF-8."""
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if not pa.types.is_binary(column.type):
            continue
        for row, value in enumerate(column.to_pylist()):
            if value is None:
                continue
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{uri}: column {name!r} is not UTF-8 text (row {offset + row + 1}: "
                    f"{value[:40]!r}, byte 0x{value[exc.start]:02x} at position {exc.start}); "
                    f"save the file as UTF-8 ({_RECODE})"
                ) from None


def not_utf8_message(uri: str, column: str) -> str:
    """A later block of a text column that is not UTF-8 (pyarrow says so without a row)."""
    return f"{uri}: column {column!r} is not UTF-8 text; save the file as UTF-8 ({_RECODE})"


def is_number(text: str) -> bool:
    """Whether a header's name reads as a number (a data row taken for the header)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _codec(path: str) -> str:
    lower = path.lower()
    for suffix, name in ((".gz", "gzip"), (".bz2", "bzip2"), (".zst", "zstd")):
        if lower.endswith(suffix):
            return name
    return "compressed"
