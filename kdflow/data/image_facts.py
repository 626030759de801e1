"""Image data as users keep it, read once into one row of facts per image (`ImageSet`).

Two layouts, local or on S3 (`s3://bucket/prefix`):

- **folder**: one sub-folder per class holding PNG/JPEG/WebP files (`cat/001.png`); the
  class is the sub-folder's name, and files deeper down belong to that sub-folder's class.
  Files whose extension is not an image's, and files at the top, are listed in
  `other_files` and not read; hidden entries (`.DS_Store`, `.ipynb_checkpoints/`) are
  skipped.
- **table**: a Parquet or CSV file with an image column (`--image-column`) of paths
  (relative to the table's folder, absolute, or s3://) or of the files' bytes, and the
  label column.

Every image is read once and fully decoded with Pillow (`Image.open`, then `load`) on a
thread pool (Pillow releases the GIL while it decodes): the facts keep its size in bytes,
SHA-256, format, mode, width and height (after EXIF orientation, as `decode_image` will
see it), whether it decodes and, if not, why. No pixels are kept: a folder's files are read
again by `ImageSet.load`, a bytes table keeps its Arrow column. What the facts mean for the
run (undecodable files, classes, sizes, duplicates) is `kdflow.validation.image_checks`'s.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pa_fs

from kdflow.data import storage
from kdflow.data.tables import open_table, resolve_uri
from kdflow.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
"""File extensions read as images (any case)."""
FACT_COLUMNS = [
    "path",
    "label",
    "bytes",
    "sha256",
    "format",
    "mode",
    "width",
    "height",
    "decodes",
    "error",
]
"""The columns of `ImageSet.facts`, in order."""
MISSING_FILE = "missing file"
_CHUNK = 4096
"""Images handed to the thread pool at a time (bounds the pending futures)."""
_ROTATED = {5, 6, 7, 8}
"""EXIF orientations that swap width and height."""


@dataclass
class ImageSet:
    """One split of image data: a row of facts per image, and what is not an image."""

    name: str
    """The URI as given."""
    layout: str
    """`folder` (a sub-folder per class) or `table` (a column of paths or bytes)."""
    facts: pd.DataFrame
    """One row per image (`FACT_COLUMNS`): folders sorted by class then path, tables in
    table order."""
    empty_classes: list[str] = field(default_factory=list)
    """Class folders without an image file."""
    other_files: list[str] = field(default_factory=list)
    """Files that are not images by extension, or lie outside the class folders: not read."""
    missing: list[str] = field(default_factory=list)
    """Paths the table lists that do not exist."""
    sources: list[str | None] = field(default_factory=list, repr=False)
    """Where each fact row's file is (None: the bytes are in `blobs`, or there is no path)."""
    blobs: pa.ChunkedArray | None = field(default=None, repr=False)
    """A bytes table's image column, row for row with the facts."""
    files: _Files = field(default_factory=lambda: _Files(), repr=False, compare=False)
    """Opens the files (one filesystem per scheme and bucket)."""

    def load(self, rows: Sequence[int] | np.ndarray) -> list[bytes]:
        """The image files' bytes of these fact rows (read again, on a thread pool)."""
        rows = [int(r) for r in rows]
        if self.blobs is not None:
            return [bytes(self.blobs[r].as_py() or b"") for r in rows]

        def read(row: int) -> bytes:
            uri = self.sources[row]
            data, error = (None, "no path") if uri is None else self.files.fetch(uri)
            if data is None:
                raise DataError(f"{self.name}: image row {row} ({uri}) cannot be read: {error}")
            return data

        with ThreadPoolExecutor(_workers(None)) as pool:
            return list(pool.map(read, rows))


class _Files:
    """Reads image files by URI, with one filesystem per scheme and bucket: an S3 client
    costs milliseconds to make, too much to make per image."""

    def __init__(self) -> None:
        self._filesystems: dict[str, pa_fs.FileSystem] = {}

    def locate(self, uri: str) -> tuple[pa_fs.FileSystem, str]:
        """The filesystem and path of a file's URI (DataError for a bad URI)."""
        parsed = urlparse(uri)
        if parsed.scheme != "s3":
            return resolve_uri(uri)
        cached = self._filesystems.get(parsed.netloc)
        if cached is not None:
            return cached, f"{parsed.netloc}{parsed.path}"
        fs, path = resolve_uri(uri)
        self._filesystems.setdefault(parsed.netloc, fs)
        return fs, path

    def fetch(self, uri: str) -> tuple[bytes | None, str | None]:
        """(bytes, None), or (None, why not): `missing file`, or `cannot be read: ...`."""
        try:
            fs, path = self.locate(uri)
            with fs.open_input_stream(path) as stream:
                return bytes(stream.read()), None
        except FileNotFoundError:
            return None, MISSING_FILE
        except DataError as exc:
            return None, f"cannot be read: {exc}"
        except (OSError, pa.ArrowException) as exc:
            if self._absent(uri):
                return None, MISSING_FILE
            return None, f"cannot be read: {exc}"

    def _absent(self, uri: str) -> bool:
        try:
            fs, path = self.locate(uri)
            return bool(fs.get_file_info(path).type == pa_fs.FileType.NotFound)
        except (DataError, OSError, pa.ArrowException):
            return False


def is_image_data(uri: str, image_column: str | None) -> bool:
    """Whether `--data` names image data: `--image-column` given, or a local folder or an
    s3:// prefix that is not a file. Cheap; never raises (the readers report problems)."""
    if image_column:
        return True
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        try:
            fs, path = resolve_uri(uri.rstrip("/"))
            return bool(fs.get_file_info(path).type == pa_fs.FileType.Directory)
        except (DataError, OSError, pa.ArrowException):
            return False
    if parsed.scheme and parsed.scheme != "file" and len(parsed.scheme) > 1:
        return False  # builtin:digits, hf://...
    return Path(uri.removeprefix("file://")).expanduser().is_dir()


def read_image_set(
    uri: str,
    label_column: str = "label",
    image_column: str | None = None,
    threads: int | None = None,
) -> ImageSet:
    """Read a folder of class folders, or a table of image paths or bytes, into facts.

    Raises DataError, naming the path or option, for input that is no image data at all:
    nothing there, a folder without class folders, a table without the image or label
    column, an image column of neither strings nor bytes. Undecodable and missing files
    are facts (`decodes` False, `error` why), for validation to report.
    """
    started = time.perf_counter()
    if image_column:
        image_set = _read_table(uri, label_column, image_column, threads)
    else:
        image_set = _read_folder(uri, threads)
    facts = image_set.facts
    log.info(
        "%s: %d images (%d decode) in %d classes, read in %.1f s",
        uri,
        len(facts),
        int(facts["decodes"].sum()),
        facts["label"].nunique(),
        time.perf_counter() - started,
    )
    return image_set


# ----------------------------------------------------------------------------- folders


def _read_folder(uri: str, threads: int | None) -> ImageSet:
    """A folder per class: list it, read and decode every image file."""
    folders, names = _list_tree(uri)
    classes = sorted(
        {d.split("/")[0] for d in folders} | {f.split("/")[0] for f in names if "/" in f}
    )
    if not classes:
        raise _no_class_folders(uri, names)
    images = sorted((f.split("/")[0], f) for f in names if "/" in f and _is_image_name(f))
    other = [f for f in names if "/" not in f or not _is_image_name(f)]
    with_images = {label for label, _ in images}
    sources: list[str | None] = [storage.join(uri, path) for _, path in images]
    files = _Files()
    tasks = [
        _file_task(files, path, label, source)
        for (label, path), source in zip(images, sources, strict=True)
    ]
    return ImageSet(
        name=uri,
        layout="folder",
        facts=_facts(tasks, threads),
        empty_classes=[c for c in classes if c not in with_images],
        other_files=other,
        sources=sources,
        files=files,
    )


def _list_tree(uri: str) -> tuple[list[str], list[str]]:
    """(folders, files) under a folder or S3 prefix, relative to it, sorted; hidden
    entries (a component starting with '.') left out."""
    fs, root = resolve_uri(uri.rstrip("/"))
    try:
        kind = fs.get_file_info(root).type
        if kind == pa_fs.FileType.NotFound:
            raise DataError(f"{uri}: no such folder (image data is a folder per class)")
        if kind == pa_fs.FileType.File:
            raise DataError(
                f"{uri}: is a file; give --image-column NAME to read it as a table of image "
                "paths or bytes, or give a folder with one sub-folder per class"
            )
        infos = fs.get_file_info(pa_fs.FileSelector(root, recursive=True))
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{uri}: cannot be listed: {exc}") from exc
    prefix = len(root.rstrip("/")) + 1
    folders: list[str] = []
    files: list[str] = []
    for info in infos:
        relative = info.path[prefix:].strip("/")
        if not relative or any(part.startswith(".") for part in relative.split("/")):
            continue
        (folders if info.type == pa_fs.FileType.Directory else files).append(relative)
    return sorted(folders), sorted(files)


def _no_class_folders(uri: str, files: list[str]) -> DataError:
    """The error for a folder without sub-folders: explain the layout."""
    layout = "image data is a folder with one sub-folder per class (e.g. cat/001.png, dog/002.png)"
    images = [f for f in files if _is_image_name(f)]
    if images:
        return DataError(
            f"{uri}: {len(images)} images lie at the top but there are no class folders; "
            f"{layout}: move each image into the sub-folder of its class"
        )
    found = f"{len(files)} other files" if files else "nothing"
    return DataError(f"{uri}: no class folders (found {found}); {layout}")


def _is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


# ------------------------------------------------------------------------------ tables


def _read_table(uri: str, label_column: str, image_column: str, threads: int | None) -> ImageSet:
    """A Parquet/CSV table with a column of image paths or bytes, and the label."""
    with open_table(uri) as source:
        columns = source.columns
        for option, name in (("--image-column", image_column), ("--label-column", label_column)):
            if name not in columns:
                raise DataError(
                    f"{uri}: {option} {name!r} is not a column of the table "
                    f"(columns: {_shown(columns)})"
                )
        kind = _image_column_kind(uri, image_column, source.schema.field(image_column).type)
        wanted = list(dict.fromkeys([image_column, label_column]))
        batches = list(source.iter_batches(wanted))
        schema = pa.schema([source.schema.field(c) for c in wanted])
        table = pa.Table.from_batches(batches, batches[0].schema if batches else schema)
    images = _plain(table.column(image_column))
    labels = [None if v is None else str(v) for v in _plain(table.column(label_column)).to_pylist()]
    if kind == "bytes":
        return _bytes_table(uri, images, labels, threads)
    return _paths_table(uri, images.to_pylist(), labels, threads)


def _image_column_kind(uri: str, column: str, arrow_type: pa.DataType) -> str:
    """`paths` (strings) or `bytes` (binary); DataError naming the type otherwise."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "paths"
    if (
        pa.types.is_binary(arrow_type)
        or pa.types.is_large_binary(arrow_type)
        or pa.types.is_fixed_size_binary(arrow_type)
    ):
        return "bytes"
    raise DataError(
        f"{uri}: --image-column {column!r} holds {arrow_type} values; it must hold image file "
        "paths (strings) or the image files' bytes (binary)"
    )


def _plain(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column without dictionary encoding."""
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column


def _paths_table(
    uri: str, paths: list[str | None], labels: list[str | None], threads: int | None
) -> ImageSet:
    """Facts of a table of paths; missing files are facts rows too, and listed."""
    sources = [_resolve(p, uri) if p else None for p in paths]
    files = _Files()
    tasks = [
        _file_task(files, path or f"{uri}#{row}", label, source)
        for row, (path, label, source) in enumerate(zip(paths, labels, sources, strict=True))
    ]
    facts = _facts(tasks, threads)
    missing = facts.loc[facts["error"] == MISSING_FILE, "path"].tolist()
    return ImageSet(uri, "table", facts, missing=missing, sources=sources, files=files)


def _bytes_table(
    uri: str, blobs: pa.ChunkedArray, labels: list[str | None], threads: int | None
) -> ImageSet:
    """Facts of a table of the image files' bytes (`<table>#<row>` as each path)."""

    def task(row: int) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            data = blobs[row].as_py()
            if data is None:
                return _record(f"{uri}#{row}", labels[row], None, "no bytes (null)")
            return _described(f"{uri}#{row}", labels[row], bytes(data))

        return run

    facts = _facts([task(r) for r in range(len(blobs))], threads)
    return ImageSet(uri, "table", facts, sources=[None] * len(facts), blobs=blobs)


def _resolve(path: str, table_uri: str) -> str:
    """An image path of a table: s3:// and absolute paths as they are, others relative to
    the table's folder."""
    if storage.is_remote(path) or path.startswith("file://") or Path(path).is_absolute():
        return path
    if storage.is_remote(table_uri):
        return storage.join(table_uri.rsplit("/", 1)[0], path)
    return str(Path(table_uri.removeprefix("file://")).expanduser().parent / path)


def _shown(columns: list[str], limit: int = 12) -> str:
    return ", ".join(columns[:limit]) + (" ..." if len(columns) > limit else "")


# --------------------------------------------------------------------- reading, decoding


def _file_task(
    files: _Files, path: str, label: str | None, source: str | None
) -> Callable[[], dict[str, Any]]:
    """A task that reads one file and returns its facts."""

    def run() -> dict[str, Any]:
        if source is None:
            return _record(path, label, None, "no path (null or empty)")
        data, error = files.fetch(source)
        if data is None:
            return _record(path, label, None, error)
        return _described(path, label, data)

    return run


def _described(path: str, label: str | None, data: bytes) -> dict[str, Any]:
    """The facts of one image file's bytes: hash, size, and what Pillow makes of it."""
    record = _record(path, label, data, None)
    if not data:
        return record | {"error": "zero bytes"}
    return record | _decoded(data)


def _decoded(data: bytes) -> dict[str, Any]:
    """Pillow's format, mode and (oriented) size, and whether the image fully decodes."""
    from PIL import Image, UnidentifiedImageError

    facts: dict[str, Any] = {}
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            facts = {"format": image.format, "mode": image.mode, "width": width, "height": height}
            image.load()
            # After load: a PNG's EXIF may follow its pixels.
            if image.getexif().get(0x0112) in _ROTATED:
                facts |= {"width": height, "height": width}
    except UnidentifiedImageError:
        return facts | {"error": "not an image (cannot identify image file)"}
    except Image.DecompressionBombError as exc:
        return facts | {"error": f"too large: {exc}"}
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for damaged files
        return facts | {"error": _damage(exc)}
    return facts | {"decodes": True}


def _damage(exc: Exception) -> str:
    """A short reason for a file Pillow opened but could not decode."""
    message = str(exc) or type(exc).__name__
    if "truncated" in message.lower():
        return f"truncated: {message}"
    return f"corrupt: {message}"


def _record(path: str, label: str | None, data: bytes | None, error: str | None) -> dict[str, Any]:
    """A facts row: the file's size and hash when there are bytes, not (yet) decoded."""
    return {
        "path": path,
        "label": label,
        "bytes": None if data is None else len(data),
        "sha256": None if data is None else hashlib.sha256(data).hexdigest(),
        "format": None,
        "mode": None,
        "width": None,
        "height": None,
        "decodes": False,
        "error": error,
    }


def _facts(tasks: list[Callable[[], dict[str, Any]]], threads: int | None) -> pd.DataFrame:
    """Run the tasks on a thread pool, a chunk at a time, into the facts table."""
    records: list[dict[str, Any]] = []
    workers = _workers(threads)
    if workers <= 1 or len(tasks) < 16:
        records = [task() for task in tasks]
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="kdflow-image-facts") as pool:
            for start in range(0, len(tasks), _CHUNK):
                records += pool.map(lambda task: task(), tasks[start : start + _CHUNK])
    frame = pd.DataFrame.from_records(records, columns=FACT_COLUMNS)
    integers = {name: "Int64" for name in ("bytes", "width", "height")}
    frame = frame.astype(integers | {"decodes": bool})
    for name in ("path", "label", "sha256", "format", "mode", "error"):
        frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
    return frame


def _workers(threads: int | None) -> int:
    return max(1, threads or min(8, os.cpu_count() or 1))


MAX_SIDE = 65_535
"""Largest width or height GX accepts (JPEG's and WebP's own limit)."""


def usable_rows(image_set: ImageSet) -> np.ndarray:
    """Indices of the fact rows the prepared dataset keeps: images that decode and have a
    class (undecodable files within the contract's allowance are dropped here)."""
    facts = image_set.facts
    keep = facts["decodes"].to_numpy(dtype=bool) & facts["label"].notna().to_numpy(dtype=bool)
    return np.flatnonzero(keep)


def usable_facts(image_set: ImageSet) -> pd.DataFrame:
    """The facts of the images the prepared dataset keeps (`usable_rows`)."""
    return image_set.facts.iloc[usable_rows(image_set)]
