"""Reading tables from local paths and S3 with clear errors, in bounded memory.

`open_table(uri)` opens a Parquet, CSV or JSON Lines file (a local path or
`s3://bucket/key`) as a `TableSource`: schema and row count come from the Parquet footer
without reading data, and `iter_batches(columns)` streams a subset of columns a few
thousand rows at a time. Reading a few columns at a time is what bounds memory: a Parquet
row group of 1 M rows × 100 float columns decodes to 800 MB, one 16-column slice of it to
130 MB, a 64 Ki-row batch of that to 8 MB. CSV and JSON Lines (one JSON object a line:
`*.jsonl`, `*.ndjson`, as text corpora often come) have no columnar layout, so they are
first streamed into a temporary Parquet file.

S3 goes through `pyarrow.fs.S3FileSystem`: credentials from the usual AWS variables, the
endpoint from `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (MinIO, moto), if set.

Every failure a user can cause (missing file or bucket, a directory, an empty, header-only,
truncated or non-Parquet file, a malformed JSON line, a CSV header or encoding
`kdflow.data.csv_files` refuses) raises `DataError` naming the URI.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.fs as pa_fs
import pyarrow.parquet as pq

from kdflow.data.csv_files import (
    PARQUET_MAGIC,
    check_header,
    check_utf8,
    csv_read_options,
    file_head,
    header_names,
    not_utf8_message,
)
from kdflow.errors import DataError

log = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.bz2", ".jsonl.zst", ".ndjson", ".ndjson.gz")
BATCH_ROWS = 65_536
"""Rows per streamed batch: 64 Ki rows × 16 float columns = 8 MB."""
_CSV_BLOCK_BYTES = 4 << 20
_PARQUET_BUFFER_BYTES = 1 << 20


def read_table(uri: str) -> pd.DataFrame:
    """Read a whole Parquet, CSV or JSON Lines file (local or s3://) into a DataFrame.

    Raises DataError naming the file when it is missing, unreadable or has no rows.
    """
    with open_table(uri) as source:
        return source.read_all().to_pandas()


def open_table(uri: str) -> TableSource:
    """Open a Parquet, CSV or JSON Lines file as a `TableSource` (use it as a context
    manager)."""
    filesystem, path = resolve_uri(uri)
    _check_is_file(filesystem, path, uri)
    convert = None
    if path.lower().endswith(CSV_SUFFIXES):
        convert = csv_to_parquet
    elif path.lower().endswith(JSONL_SUFFIXES):
        convert = json_lines_to_parquet
    if convert is not None:
        workdir = Path(tempfile.mkdtemp(prefix="kdflow-csv-"))
        try:
            converted = workdir / "table.parquet"
            convert(uri, converted)
            return _open_parquet(pa_fs.LocalFileSystem(), str(converted), uri, workdir)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
    return _open_parquet(filesystem, path, uri)


def table_header(uri: str) -> list[str]:
    """The column names of a Parquet, CSV or JSON Lines file (local or s3://), from the
    Parquet footer or the first block of text; raises DataError for what `open_table`
    would refuse in the header or the first block (encoding, duplicate names, format)."""
    filesystem, path = resolve_uri(uri)
    _check_is_file(filesystem, path, uri)
    lower = path.lower()
    if lower.endswith(CSV_SUFFIXES):
        reader = _open_csv(filesystem, path, uri, {})
        try:
            check_utf8(reader.read_next_batch(), 0, uri)
        except StopIteration:
            raise DataError(f"{uri}: has a header but no rows") from None
        except (OSError, pa.ArrowException) as exc:
            raise _csv_error(uri, exc) from exc
        finally:
            reader.close()
        return list(reader.schema.names)
    if lower.endswith(JSONL_SUFFIXES):
        import pyarrow.json as pa_json

        try:
            with filesystem.open_input_stream(path, compression="detect") as stream:
                names = list(pa_json.open_json(stream).schema.names)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{uri}: cannot be read as JSON Lines: {exc}") from exc
        check_header(names, uri)
        return names
    with _open_parquet(filesystem, path, uri) as source:
        return source.columns


class TableSource:
    """A table that streams column subsets in batches: a Parquet file or an in-memory table."""

    def __init__(
        self,
        name: str,
        schema: pa.Schema,
        num_rows: int,
        parquet: pq.ParquetFile | None = None,
        table: pa.Table | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.name = name
        self.schema = schema
        self.num_rows = num_rows
        self._parquet = parquet
        self._table = table
        self._workdir = workdir

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, name: str = "dataframe") -> TableSource:
        """Wrap an in-memory DataFrame (mixed-type object columns become strings)."""
        if frame.empty:
            raise DataError(f"{name}: has no rows")
        table = pa.table({str(col): _to_arrow(frame[col]) for col in frame.columns})
        return cls(name, table.schema, table.num_rows, table=table)

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    def iter_batches(
        self, columns: list[str], batch_rows: int = BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """Stream `columns` in row order, at most `batch_rows` rows per batch."""
        try:
            if self._table is not None:
                yield from self._table.select(columns).to_batches(max_chunksize=batch_rows)
                return
            assert self._parquet is not None
            yield from self._parquet.iter_batches(
                batch_size=batch_rows, columns=columns, use_threads=False
            )
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{self.name}: the file is damaged or truncated: {exc}") from exc

    def take(self, rows: list[int], batch_rows: int = BATCH_ROWS) -> pd.DataFrame:
        """The given rows (every column) indexed by row number, in one streaming pass."""
        collector = RowCollector(rows)
        for group in column_groups(self.columns):
            offset = 0
            for batch in self.iter_batches(group, batch_rows):
                collector.add(batch, offset)
                offset += batch.num_rows
        return collector.frame()

    def read_all(self) -> pa.Table:
        """The whole table in memory (for small data; `iter_batches` streams)."""
        if self._table is not None:
            return self._table
        assert self._parquet is not None
        try:
            return self._parquet.read(use_threads=True)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{self.name}: the file is damaged or truncated: {exc}") from exc

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> TableSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RowCollector:
    """Picks given row numbers out of batches streamed column group by column group."""

    def __init__(self, rows: list[int] | np.ndarray) -> None:
        self.rows = np.unique(np.asarray(rows, dtype=np.int64))
        self._chunks: dict[str, list[pa.Array]] = {}
        self._types: dict[str, pa.DataType] = {}

    def add(self, batch: pa.RecordBatch, offset: int) -> None:
        """Keep the wanted rows of a batch whose first row is row number `offset`."""
        lo, hi = np.searchsorted(self.rows, [offset, offset + batch.num_rows])
        picked = batch.take(pa.array(self.rows[lo:hi] - offset))
        for field, column in zip(batch.schema, picked.columns, strict=True):
            self._chunks.setdefault(field.name, []).append(column)
            self._types[field.name] = field.type

    def frame(self) -> pd.DataFrame:
        """The collected rows as a DataFrame indexed by row number (index name `row`)."""
        table = pa.table(
            {
                name: pa.chunked_array(chunks, self._types[name])
                for name, chunks in self._chunks.items()
            }
        )
        return table.to_pandas().set_axis(pd.Index(self.rows, name="row"))


def column_groups(columns: list[str], size: int = 16) -> list[list[str]]:
    """Split columns into groups read together (16 × 64 Ki rows × 8 B = 8 MB a batch)."""
    return [columns[i : i + size] for i in range(0, len(columns), size)]


def column_counts(uri: str, column: str) -> tuple[pa.DataType, dict[Any, int]]:
    """One column of a Parquet, CSV or JSON Lines file (local or s3://), streamed: its
    Arrow type and how many rows hold each distinct value (nulls left out). Memory: one
    batch of the column and the distinct values. A CSV column whose later rows do not fit
    the type its first block gave (text after numbers) is read again as text. JSON Lines
    go through `open_table` (into Parquet first)."""
    filesystem, path = resolve_uri(uri)
    _check_is_file(filesystem, path, uri)
    if path.lower().endswith(JSONL_SUFFIXES):
        with open_table(uri) as source:
            if column not in source.columns:
                raise DataError(f"{uri}: cannot read column {column!r}: no such column")
            arrow_type = source.schema.field(column).type
            return _counted(arrow_type, source.iter_batches([column]), uri, column)
    csv = path.lower().endswith(CSV_SUFFIXES)
    types: dict[str, pa.DataType] = {}
    while True:
        try:
            return _count_column(filesystem, path, column, csv, types, uri)
        except pa.ArrowInvalid as exc:
            if csv and column not in types:
                types[column] = pa.string()
                continue
            raise DataError(f"{uri}: cannot read column {column!r}: {exc}") from exc
        except (OSError, pa.ArrowException, KeyError) as exc:
            raise DataError(f"{uri}: cannot read column {column!r}: {exc}") from exc


def _count_column(
    filesystem: pa_fs.FileSystem,
    path: str,
    column: str,
    csv: bool,
    types: dict[str, pa.DataType],
    uri: str,
) -> tuple[pa.DataType, dict[Any, int]]:
    with contextlib.ExitStack() as stack:
        batches: Iterator[pa.RecordBatch]
        if csv:
            options = csv_read_options(file_head(filesystem, path, uri), uri, _CSV_BLOCK_BYTES)
            stream = stack.enter_context(filesystem.open_input_stream(path, compression="detect"))
            reader = pa_csv.open_csv(
                stream,
                read_options=options,
                convert_options=pa_csv.ConvertOptions(include_columns=[column], column_types=types),
            )
            stack.callback(reader.close)
            arrow_type, batches = reader.schema.field(column).type, iter(reader)
        else:
            # pre_buffer off, as in `_open_parquet`: iter_batches would keep every range.
            parquet = pq.ParquetFile(stack.enter_context(filesystem.open_input_file(path)),
                                     pre_buffer=False, buffer_size=_PARQUET_BUFFER_BYTES)
            stack.callback(parquet.close)
            arrow_type = parquet.schema_arrow.field(column).type
            batches = parquet.iter_batches(BATCH_ROWS, columns=[column], use_threads=False)
        return _counted(arrow_type, batches, uri, column)


def _counted(
    arrow_type: pa.DataType, batches: Iterator[pa.RecordBatch], uri: str, column: str
) -> tuple[pa.DataType, dict[Any, int]]:
    """The type and the rows per value of a label column's batches (nested: refused)."""
    if pa.types.is_nested(arrow_type) or pa.types.is_binary(arrow_type):
        raise DataError(
            f"{uri}: column {column!r} holds {arrow_type} values; a label column holds "
            "classes (integers, booleans or strings)"
        )
    counts: dict[Any, int] = {}
    for batch in batches:
        array = batch.column(0)
        if pa.types.is_dictionary(array.type):
            array = array.dictionary_decode()
        for entry in array.value_counts().to_pylist():
            if entry["values"] is not None:
                counts[entry["values"]] = counts.get(entry["values"], 0) + entry["counts"]
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return arrow_type, counts


def resolve_uri(uri: str) -> tuple[pa_fs.FileSystem, str]:
    """The filesystem and path of a local path, file:// or s3:// URI."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise DataError(f"{uri}: an S3 URI needs a bucket: s3://BUCKET/KEY")
        return _s3_filesystem(uri), f"{parsed.netloc}{parsed.path}"
    if parsed.scheme == "file":
        return pa_fs.LocalFileSystem(), parsed.path
    if parsed.scheme and len(parsed.scheme) > 1:
        raise DataError(f"{uri}: unsupported scheme {parsed.scheme!r}; use a path or s3://")
    return pa_fs.LocalFileSystem(), str(Path(uri).expanduser().absolute())


def csv_to_parquet(uri: str, out: Path, batch_rows: int = BATCH_ROWS) -> Path:
    """Stream a CSV file into Parquet in bounded memory.

    Types are inferred from the first block; when a later row does not fit (text in a
    numeric column, a float after integers), the conversion restarts with that column
    widened to float or string, so the validator can report the bad values.
    """
    filesystem, path = resolve_uri(uri)
    column_types: dict[str, pa.DataType] = {}
    while True:
        reader = _open_csv(filesystem, path, uri, column_types)
        try:
            rows = _write_batches(reader, out, batch_rows, uri)
        except pa.ArrowInvalid as exc:
            if "invalid UTF8" in str(exc) and (match := _CSV_COLUMN_ERROR.search(str(exc))):
                name = reader.schema.names[int(match.group(1))]
                raise DataError(not_utf8_message(uri, name)) from exc
            widened = _widen_csv_column(str(exc), reader.schema, column_types)
            if widened is None:
                raise _csv_error(uri, exc) from exc
            log.info("%s: reading column %r as %s", uri, *widened)
            column_types[widened[0]] = widened[1]
            continue
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{uri}: cannot be read as CSV{_damaged(path)}: {exc}") from exc
        finally:
            reader.close()
        if rows == 0:
            raise DataError(f"{uri}: has a header but no rows")
        return out


def json_lines_to_parquet(uri: str, out: Path, batch_rows: int = BATCH_ROWS) -> Path:
    """Stream a JSON Lines file (one object a line) into Parquet in bounded memory.

    Column types are inferred from the first 4 MiB; a later value of another type (text
    after numbers) is an error naming the column and the row, as is a line that is not a
    JSON object.
    """
    import pyarrow.json as pa_json

    filesystem, path = resolve_uri(uri)
    try:
        stream = filesystem.open_input_stream(path, compression="detect")
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{uri}: cannot be read as JSON Lines: {exc}") from exc
    try:
        reader = pa_json.open_json(
            stream, read_options=pa_json.ReadOptions(block_size=_CSV_BLOCK_BYTES)
        )
        rows = _write_batches(reader, out, batch_rows)
    except pa.ArrowInvalid as exc:
        if "Empty JSON stream" in str(exc):
            raise DataError(f"{uri}: has no rows") from exc
        raise DataError(
            f"{uri}: not well-formed JSON Lines (one JSON object a line, each field of one "
            f"type in every line): {exc}"
        ) from exc
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{uri}: cannot be read as JSON Lines: {exc}") from exc
    finally:
        stream.close()
    if rows == 0:
        raise DataError(f"{uri}: has no rows")
    return out


def _write_batches(
    reader: pa.RecordBatchReader, out: Path, batch_rows: int, csv_uri: str | None = None
) -> int:
    """Write every batch to Parquet; with `csv_uri`, a column that is not UTF-8 (which
    pyarrow reads from CSV as bytes) stops it, named."""
    rows = 0
    check = csv_uri is not None and any(pa.types.is_binary(t) for t in reader.schema.types)
    with pq.ParquetWriter(out, reader.schema) as writer:
        for batch in reader:
            if check:
                check_utf8(batch, rows, str(csv_uri))
            writer.write_batch(batch, row_group_size=batch_rows * 4)
            rows += batch.num_rows
    return rows


def _open_csv(
    filesystem: pa_fs.FileSystem, path: str, uri: str, column_types: dict[str, pa.DataType]
) -> pa.RecordBatchReader:
    options = csv_read_options(file_head(filesystem, path, uri), uri, _CSV_BLOCK_BYTES)
    stream = filesystem.open_input_stream(path, compression="detect")
    try:
        reader = pa_csv.open_csv(
            stream,
            read_options=options,
            convert_options=pa_csv.ConvertOptions(column_types=column_types),
        )
    except pa.ArrowInvalid as exc:
        stream.close()
        raise _csv_error(uri, exc) from exc
    except (OSError, pa.ArrowException) as exc:
        stream.close()
        raise DataError(f"{uri}: cannot be read as CSV{_damaged(path)}: {exc}") from exc
    try:
        header_names(reader.schema, uri)
    except DataError:
        reader.close()
        raise
    return reader


def _damaged(path: str) -> str:
    compressed = path.lower().endswith((".gz", ".bz2", ".zst"))
    return " (the compressed file is truncated or damaged)" if compressed else ""


def _csv_error(uri: str, exc: Exception) -> DataError:
    message = str(exc)
    if "cannot infer number of columns" in message:
        return DataError(f"{uri}: has a header but no rows")
    if "Empty CSV file" in message:
        return DataError(f"{uri}: the file is empty")
    return DataError(
        f"{uri}: not a well-formed CSV file (truncated, or a row with the wrong number of "
        f"fields?): {message}"
    )


_CSV_COLUMN_ERROR = re.compile(r"In CSV column #(\d+): .*conversion error to (\w+)")


def _widen_csv_column(
    message: str, schema: pa.Schema, column_types: dict[str, pa.DataType]
) -> tuple[str, pa.DataType] | None:
    """The (column, wider type) that fixes a mid-file conversion error, or None."""
    match = _CSV_COLUMN_ERROR.search(message)
    if match is None:
        return None
    name = schema.names[int(match.group(1))]
    current = column_types.get(name)
    if current is None and match.group(2) != "double":
        return name, pa.float64()
    if current == pa.string():
        return None
    return name, pa.string()


def _open_parquet(
    filesystem: pa_fs.FileSystem, path: str, uri: str, workdir: Path | None = None
) -> TableSource:
    try:
        handle = filesystem.open_input_file(path)
        parquet = pq.ParquetFile(handle, pre_buffer=False, buffer_size=_PARQUET_BUFFER_BYTES)
    except (OSError, pa.ArrowException) as exc:
        hint = ""
        if not path.lower().endswith(PARQUET_SUFFIXES):
            hint = (
                f" (kdflow reads Parquet, CSV named *{', *'.join(CSV_SUFFIXES)}, or JSON "
                f"Lines named *{', *'.join(JSONL_SUFFIXES)})"
            )
        elif not _head(filesystem, path).startswith(PARQUET_MAGIC):
            raise DataError(
                f"{uri}: not a readable Parquet file: it does not start with Parquet's PAR1 "
                "bytes (a CSV file must be named *.csv, JSON Lines *.jsonl)"
            ) from exc
        raise DataError(
            f"{uri}: not a readable Parquet file (truncated or another format?){hint}: {exc}"
        ) from exc
    try:
        check_header(list(parquet.schema_arrow.names), uri)
        if parquet.metadata.num_rows == 0:
            raise DataError(f"{uri}: has no rows")
    except DataError:
        parquet.close()
        raise
    return TableSource(
        uri, parquet.schema_arrow, parquet.metadata.num_rows, parquet=parquet, workdir=workdir
    )


def _head(filesystem: pa_fs.FileSystem, path: str) -> bytes:
    try:
        with filesystem.open_input_stream(path) as stream:
            return bytes(stream.read(4))
    except (OSError, pa.ArrowException):
        return b""


def _check_is_file(filesystem: pa_fs.FileSystem, path: str, uri: str) -> None:
    try:
        info = filesystem.get_file_info(path)
    except OSError as exc:
        raise DataError(f"{uri}: cannot be reached: {exc}") from exc
    if info.type == pa_fs.FileType.Directory:
        raise DataError(f"{uri}: is a directory; give the path of one Parquet or CSV file")
    if info.type == pa_fs.FileType.NotFound:
        if isinstance(filesystem, pa_fs.S3FileSystem):
            bucket = path.split("/", 1)[0]
            if filesystem.get_file_info(bucket).type == pa_fs.FileType.NotFound:
                raise DataError(f"{uri}: bucket {bucket!r} does not exist (or is not visible)")
            raise DataError(f"{uri}: no such object in bucket {bucket!r}")
        raise DataError(f"{uri}: no such file")
    if info.size == 0:
        raise DataError(f"{uri}: the file is empty (0 bytes)")


def _s3_filesystem(uri: str) -> pa_fs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options: dict[str, Any] = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    try:
        return pa_fs.S3FileSystem(**options)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{uri}: cannot set up S3 access: {exc}") from exc


def _to_arrow(series: pd.Series) -> pa.Array:
    """A pandas column as Arrow; object columns mixing text and numbers become text."""
    try:
        return pa.array(series, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if _is_missing(v) else str(v) for v in series], type=pa.string())


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
