"""Shared storage for checkpoints, teacher caches and staged inputs: a folder or S3.

A storage URI is a local path (`/data/kdflow`, `file:///data/kdflow`) or `s3://bucket/prefix`.
S3 goes through `pyarrow.fs.S3FileSystem` like `kdflow.data.tables`: credentials from the usual AWS
variables, the endpoint from `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (MinIO, moto).
Ray Train gets the same filesystem object (`ray_storage`), so checkpoints land where the
caches do. Files are written to a temporary name and moved into place: a reader never sees
half a file, and a crashed writer leaves no file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pa_fs
import pyarrow.parquet as pq

from kdflow.data.tables import resolve_uri
from kdflow.errors import KdflowError

log = logging.getLogger(__name__)


class StorageError(KdflowError):
    """A storage location cannot be reached, read or written."""


def is_remote(uri: str | Path) -> bool:
    return urlparse(str(uri)).scheme == "s3"


def join(uri: str | Path, *parts: str) -> str:
    """`join("s3://b/p", "x", "y")` -> `s3://b/p/x/y`; local paths stay paths."""
    if is_remote(uri):
        return "/".join([str(uri).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(str(uri).removeprefix("file://")).joinpath(*parts))


def filesystem(uri: str | Path) -> tuple[pa_fs.FileSystem, str]:
    """The pyarrow filesystem and the path in it (`bucket/key` for S3)."""
    try:
        return resolve_uri(str(uri))
    except KdflowError as exc:
        raise StorageError(str(exc)) from exc


def ray_storage(uri: str | Path) -> tuple[str, pa_fs.FileSystem | None]:
    """`RunConfig(storage_path=..., storage_filesystem=...)` for a storage URI.

    Ray Train takes a custom filesystem with the path's scheme stripped (`bucket/prefix`);
    passing the S3 filesystem object is what carries a custom endpoint (MinIO) to Ray.
    """
    if not is_remote(uri):
        return str(Path(str(uri).removeprefix("file://")).absolute()), None
    fs, path = filesystem(uri)
    return path, fs


def exists(uri: str | Path) -> bool:
    fs, path = filesystem(uri)
    return _info(fs, path, uri).type != pa_fs.FileType.NotFound


def _info(fs: pa_fs.FileSystem, path: str, uri: str | Path) -> pa_fs.FileInfo:
    try:
        return fs.get_file_info(path)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"{uri}: cannot be reached: {exc}") from exc


def size(uri: str | Path) -> int:
    fs, path = filesystem(uri)
    info = _info(fs, path, uri)
    if info.type != pa_fs.FileType.File:
        raise StorageError(f"{uri}: no such file")
    return int(info.size)


def read_bytes(uri: str | Path) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as stream:
            return bytes(stream.read())
    except FileNotFoundError as exc:
        raise StorageError(f"{uri}: no such file") from exc
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"{uri}: cannot be read: {exc}") from exc


def read_range(uri: str | Path, offset: int, nbytes: int) -> bytes:
    """`nbytes` bytes from `offset`: a ranged GET on S3, a seek locally."""
    fs, path = filesystem(uri)
    try:
        with fs.open_input_file(path) as handle:
            return bytes(handle.read_at(nbytes, offset))
    except FileNotFoundError as exc:
        raise StorageError(f"{uri}: no such file") from exc
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"{uri}: cannot be read: {exc}") from exc


def read_json(uri: str | Path) -> Any:
    return json.loads(read_bytes(uri))


def write_bytes(uri: str | Path, data: bytes) -> None:
    """Write a whole file atomically (temporary name, then a move)."""
    fs, path = filesystem(uri)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(tmp) as stream:
            stream.write(data)
        fs.move(tmp, path)
    except (OSError, pa.ArrowException) as exc:
        with contextlib.suppress(OSError, pa.ArrowException):
            fs.delete_file(tmp)
        raise StorageError(f"{uri}: cannot be written: {exc}") from exc


def write_json(uri: str | Path, value: Any) -> None:
    write_bytes(uri, json.dumps(value, indent=2).encode())


def put_file(local: Path, uri: str | Path) -> None:
    """Copy a local file to `uri` atomically."""
    fs, path = filesystem(uri)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pa_fs.copy_files(str(local), tmp, destination_filesystem=fs)
        fs.move(tmp, path)
    except (OSError, pa.ArrowException) as exc:
        with contextlib.suppress(OSError, pa.ArrowException):
            fs.delete_file(tmp)
        raise StorageError(f"{uri}: cannot be written: {exc}") from exc


def upload_dir(local: Path, uri: str | Path) -> str:
    """Copy a local folder's files to `uri` (replacing files of the same name)."""
    fs, path = filesystem(uri)
    if not is_remote(uri) and Path(path).resolve() == Path(local).resolve():
        return str(uri)
    try:
        fs.create_dir(path, recursive=True)
        pa_fs.copy_files(str(local), path, destination_filesystem=fs)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"{local} -> {uri}: cannot be copied: {exc}") from exc
    return str(uri)


def download_dir(uri: str | Path, local: Path) -> Path:
    """Copy the files under `uri` into the local folder `local` (created if needed)."""
    fs, path = filesystem(uri)
    if _info(fs, path, uri).type != pa_fs.FileType.Directory:
        raise StorageError(f"{uri}: no such folder")
    local.mkdir(parents=True, exist_ok=True)
    try:
        pa_fs.copy_files(path, str(local), source_filesystem=fs)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"{uri} -> {local}: cannot be copied: {exc}") from exc
    return local


@contextlib.contextmanager
def local_dir(uri: str | Path) -> Iterator[Path]:
    """A local folder with the files under `uri`: the folder itself, or a temporary copy."""
    if not is_remote(uri):
        yield Path(str(uri).removeprefix("file://"))
        return
    tmp = Path(tempfile.mkdtemp(prefix="kdflow-"))
    try:
        yield download_dir(uri, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def optional_local_dir(uri: str | Path | None) -> Iterator[Path | None]:
    """`local_dir(uri)`, or None when there is no `uri`."""
    if uri is None:
        yield None
        return
    with local_dir(uri) as folder:
        yield folder


@contextlib.contextmanager
def writing_dir(uri: str | Path) -> Iterator[Path]:
    """A local folder to write `uri`'s files into: the folder itself (created), or a
    temporary one uploaded to `uri` once the block ends without an error."""
    if not is_remote(uri):
        folder = Path(str(uri).removeprefix("file://"))
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    tmp = Path(tempfile.mkdtemp(prefix="kdflow-"))
    try:
        yield tmp
        upload_dir(tmp, uri)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256(uri: str | Path) -> str:
    """SHA-256 of one file, streamed in 1 MiB blocks."""
    fs, path = filesystem(uri)
    digest = hashlib.sha256()
    try:
        with fs.open_input_stream(path) as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
    except FileNotFoundError as exc:
        raise StorageError(f"{uri}: no such file") from exc
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"{uri}: cannot be read: {exc}") from exc
    return digest.hexdigest()


def list_files(uri: str | Path) -> list[str]:
    """Paths of the files under `uri`, relative to it, sorted; empty if it does not exist."""
    fs, path = filesystem(uri)
    if _info(fs, path, uri).type != pa_fs.FileType.Directory:
        return []
    selector = pa_fs.FileSelector(path, recursive=True)
    return sorted(
        info.path[len(path.rstrip("/")) + 1 :]
        for info in fs.get_file_info(selector)
        if info.type == pa_fs.FileType.File
    )


@contextlib.contextmanager
def parquet_file(uri: str | Path) -> Iterator[pq.ParquetFile]:
    """A Parquet file opened for random access (footer first, then only what is read)."""
    fs, path = filesystem(uri)
    try:
        handle = fs.open_input_file(path)
    except FileNotFoundError as exc:
        raise StorageError(f"{uri}: no such file") from exc
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"{uri}: cannot be read: {exc}") from exc
    # What fails later (the footer, a row group: an S3 error past pyarrow's own retries)
    # names the object too.
    try:
        yield pq.ParquetFile(handle)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"{uri}: cannot be read: {exc}") from exc
    finally:
        handle.close()


def iter_row_groups(
    pf: pq.ParquetFile, columns: list[str] | None, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """`pf`'s rows in batches of at most `batch_rows`, one row group read at a time.

    Not `ParquetFile.iter_batches`: its reader keeps every range it pre-buffered until the
    file is closed (2 M rows of 64 float32 features: 736 MB still held at the end, 8 GB
    at 20 M); `read_row_group` frees each group's buffers once its batches are dropped.
    """
    for g in range(pf.metadata.num_row_groups):
        yield from pf.read_row_group(g, columns=columns).to_batches(max_chunksize=batch_rows)


def read_parquet_rows(
    uri: str | Path, start: int = 0, stop: int | None = None, columns: list[str] | None = None
) -> pa.Table:
    """Rows [start, stop) of a Parquet file, decoding only the row groups that hold them."""
    with parquet_file(uri) as pf:
        stop = pf.metadata.num_rows if stop is None else min(stop, pf.metadata.num_rows)
        groups, first, offset = [], None, 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if offset < stop and offset + n > start:
                groups.append(g)
                first = offset if first is None else first
            offset += n
        if not groups or stop <= start:
            return pf.schema_arrow.empty_table().select(columns or pf.schema_arrow.names)
        table = pf.read_row_groups(groups, columns=columns)
    assert first is not None
    return table.slice(start - first, stop - start)


def delete(uri: str | Path) -> None:
    """Remove a file, or a folder and everything under it, if it exists."""
    fs, path = filesystem(uri)
    kind = _info(fs, path, uri).type
    try:
        if kind == pa_fs.FileType.File:
            fs.delete_file(path)
        elif kind == pa_fs.FileType.Directory:
            fs.delete_dir(path)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"{uri}: cannot be deleted: {exc}") from exc
