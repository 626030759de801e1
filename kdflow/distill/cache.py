"""The teacher-output cache of offline KD: each teacher's logits over the training split.

One entry per (dataset, teacher, top-k) under `<storage>/teacher-cache/<dataset key>/`.
A classifier's entry (format 2) is a folder that Ray Data batch inference fills
(`kdflow.distill.cache_fill`):

    <teacher sha[:24]>[-top<k>]/
        meta.json                      written last: the entry exists once it does
        val.parquet                    `val`: the validation logits, always in full
        <fill id>/part-<row>-<id>.parquet   shards: `row` and the train logits

- `train`: C float16 logits per row, or with top-k `train_values` (k float16) and
  `train_indices` (k int16, int32 past 32,767 classes), the k largest logits per row;
- `row`: the row's position in the prepared train split. Shards hold rows in whatever
  order the actors finished them (and a shard's rows need not be contiguous): readers
  place each row by its `row`, never by file or position, so the order Ray Data ran the
  blocks in (it keeps none unless told to) cannot misalign targets and inputs;
- meta.json: the dataset key, the teacher's weights hash, rows, classes, top-k, the
  format, and each shard's file, rows and first/last row (a reader of rows [a, b) opens
  only the shards that overlap them, and no file that is not listed: a torn fill's
  leftovers are never read).

A causal LM's entry (format 1, `<name>-T<temperature>.safetensors`) is one safetensors
file holding `train_values` / `train_indices` (N × L × k) and `val`, rows row-major so a
Ray Train worker reads only its shard's byte range (a ranged GET on S3).

The dataset key hashes the train and val Parquet files, so another split of the same table
(another seed) gets its own entry; the teacher's version is the SHA-256 of its weights.
A later run with the same data and teachers reuses the entry; one of another format (a
classifier's format-1 file from before) is not read, and is filled again.

Memory: an entry holds N·C·2 bytes (60,000 × 10 classes: 1.2 MB; 1.28 M × 1,000: 2.6 GB);
at top-k, N·k·4 bytes with int16 indices (N·k·6 past 32,767 classes): 1.28 M × top-32 =
164 MB.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import save_file

from kdflow.data import storage
from kdflow.errors import DataError, KdflowError

CACHE_FOLDER = "teacher-cache"
FORMAT_VERSION = 1
"""A single-file (safetensors) entry's format: a causal LM's."""
SHARDED_FORMAT = 2
"""A Parquet-sharded entry's format: a classifier's (format 1 was its safetensors file)."""
_DTYPES = {"F16": np.float16, "F32": np.float32, "I16": np.int16, "I32": np.int32,
           "I64": np.int64}


def dataset_key(dataset_uri: str | Path) -> str:
    """SHA-256 over the train and val Parquet files' hashes."""
    digest = hashlib.sha256()
    for split in ("train", "val"):
        digest.update(storage.sha256(storage.join(dataset_uri, f"{split}.parquet")).encode())
    return digest.hexdigest()


def entry_uri(
    root: str | Path, data_key: str, teacher_sha: str, top_k: int, tag: str = "",
    sharded: bool = True,
) -> str:
    """Where an entry lives: a folder of Parquet shards (`sharded`), else a safetensors
    file; `tag` names what else it depends on (a causal LM's `-T1`)."""
    name = f"{teacher_sha[:24]}{f'-top{top_k}' if top_k else ''}{tag}"
    return storage.join(
        root, CACHE_FOLDER, data_key[:24], name if sharded else f"{name}.safetensors"
    )


def is_sharded(uri: str) -> bool:
    return not uri.endswith(".safetensors")


def index_dtype(n_classes: int) -> type[np.integer]:
    return np.int16 if n_classes <= np.iinfo(np.int16).max else np.int32


def entry_bytes(rows: int, n_classes: int, top_k: int = 0) -> int:
    """Bytes of an entry's train logits (what a run holds in memory when it reads all rows)."""
    if not top_k:
        return rows * n_classes * 2
    return rows * top_k * (2 + np.dtype(index_dtype(n_classes)).itemsize)


def write_entry(
    uri: str,
    train: dict[str, np.ndarray],
    val: np.ndarray,
    meta: dict[str, Any],
) -> None:
    """Write one cache entry (local temporary file, then an atomic put)."""
    tensors = {k: np.ascontiguousarray(v) for k, v in train.items()}
    tensors["val"] = np.ascontiguousarray(val.astype(np.float16))
    metadata = {k: json.dumps(v) for k, v in {**meta, "format": FORMAT_VERSION}.items()}
    with tempfile.TemporaryDirectory(prefix="kdflow-cache-") as tmp:
        path = Path(tmp) / "entry.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        storage.put_file(path, uri)


@dataclass
class _Entry:
    """What both layouts share: the entry's meta, matched against the wanted one."""

    uri: str
    meta: dict[str, Any]
    FORMAT: ClassVar[int]

    def matches(self, meta: dict[str, Any]) -> bool:
        """True when the entry was written, whole and in this layout's format, for exactly
        these data, teacher and top-k."""
        return self.meta.get("format") == self.FORMAT and all(
            self.meta.get(k) == v for k, v in meta.items()
        )

    @property
    def top_k(self) -> int:
        return int(self.meta.get("top_k", 0))

    def problem(self) -> str | None:
        """Why the entry's files cannot be what its header says (truncated, missing), or
        None: checked before a run uses an entry, which is then filled again."""
        return None


@dataclass
class CacheEntry(_Entry):
    """An entry's header: where each tensor's bytes are, read without loading the data."""

    FORMAT: ClassVar[int] = FORMAT_VERSION
    tensors: dict[str, tuple[str, list[int], int, int]]  # name -> dtype, shape, begin, end
    data_start: int

    @classmethod
    def open(cls, uri: str) -> CacheEntry | None:
        """The entry at `uri`, or None when there is none (or it is not a cache entry)."""
        if not storage.exists(uri):
            return None
        try:
            (length,) = struct.unpack("<Q", storage.read_range(uri, 0, 8))
            header = json.loads(storage.read_range(uri, 8, length))
            meta = {k: json.loads(v) for k, v in header.pop("__metadata__", {}).items()}
            tensors = {
                name: (t["dtype"], list(t["shape"]), *t["data_offsets"])
                for name, t in header.items()
            }
        except (ValueError, KeyError, struct.error):
            return None
        return cls(uri, meta, tensors, 8 + length)

    def problem(self) -> str | None:
        end = self.data_start + max((t[3] for t in self.tensors.values()), default=0)
        size = storage.size(self.uri)
        return None if size == end else f"{size} bytes where its header needs {end}"

    def rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of one tensor: one ranged read of its bytes."""
        dtype_name, shape, begin, _ = self.tensors[name]
        dtype = np.dtype(_DTYPES[dtype_name])
        stop = shape[0] if stop is None else min(stop, shape[0])
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        data = storage.read_range(
            self.uri, self.data_start + begin + start * row_bytes, (stop - start) * row_bytes
        )
        return np.frombuffer(bytearray(data), dtype=dtype).reshape(stop - start, *shape[1:])

    def train_rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """A shard of the train logits: {"train": ...} or {"train_values", "train_indices"}."""
        names = ["train_values", "train_indices"] if self.top_k else ["train"]
        return {n: self.rows(n, start, stop) for n in names}


def _column(values: np.ndarray) -> pa.FixedSizeListArray:
    """An N × W array as one Parquet column of W-value lists (float16 stays float16)."""
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, int(values.shape[1]))


def _array(column: pa.ChunkedArray | pa.Array, width: int, dtype: Any) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(dtype, copy=False).reshape(len(column), width)


def shard_table(rows: np.ndarray, parts: dict[str, np.ndarray]) -> pa.Table:
    """One block of a sharded entry: each row's position in the train split and its parts
    (`train`, or `train_values` and `train_indices`)."""
    return pa.table({"row": pa.array(rows.astype(np.int64)),
                     **{name: _column(v) for name, v in parts.items()}})


def write_shard(folder: str, table: pa.Table) -> dict[str, Any]:
    """Write one shard under `folder` (a fill's own folder); returns what meta.json lists
    of it. The name carries its first row, for people; readers go by meta.json."""
    rows = table.column("row").to_numpy()
    first, last = (int(rows.min()), int(rows.max())) if len(rows) else (0, -1)
    name = f"part-{first:010d}-{uuid.uuid4().hex[:8]}.parquet"
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(storage.join(folder, name), buffer.getvalue())
    return {"file": f"{folder.rstrip('/').rsplit('/', 1)[-1]}/{name}", "rows": len(rows),
            "first": first, "last": last}


def commit_sharded(
    uri: str, val: np.ndarray, meta: dict[str, Any], shards: list[dict[str, Any]]
) -> None:
    """Finish a sharded entry: its validation logits, then meta.json (the commit: until it
    is written, the entry does not exist, or still is the one it replaces)."""
    total = sum(int(s["rows"]) for s in shards)
    if total != int(meta["rows"]):
        raise DataError(f"{uri}: the fill wrote {total} rows; the train split has {meta['rows']}")
    replaced = ShardedEntry.open(uri)
    buffer = io.BytesIO()
    pq.write_table(pa.table({"val": _column(val.astype(np.float16))}), buffer)
    storage.write_bytes(storage.join(uri, "val.parquet"), buffer.getvalue())
    storage.write_json(storage.join(uri, "meta.json"),
                       {**meta, "format": SHARDED_FORMAT, "shards": shards})
    if replaced is not None and not replaced.matches(meta):
        # A stale entry's shards (another format, a torn meta): no run reads them. One that
        # matches was a concurrent fill of the same entry: a run may be reading it.
        keep = {str(s["file"]).split("/")[0] for s in shards}
        for old in {str(s.get("file", "")).split("/")[0] for s in replaced.meta.get("shards", [])}:
            if old and old not in keep:
                storage.delete(storage.join(uri, old))


def fill_folder(uri: str) -> str:
    """A new folder for one fill's shards inside the entry `uri`."""
    return storage.join(uri, f"fill-{uuid.uuid4().hex[:12]}")


@dataclass
class ShardedEntry(_Entry):
    """A classifier's entry: meta.json read, shards opened only when rows are asked for."""

    FORMAT: ClassVar[int] = SHARDED_FORMAT

    @classmethod
    def open(cls, uri: str) -> ShardedEntry | None:
        """The entry at `uri`, or None when there is none (no meta.json, or not readable)."""
        meta_uri = storage.join(uri, "meta.json")
        if not storage.exists(meta_uri):
            return None
        try:
            meta = storage.read_json(meta_uri)
        except ValueError:
            return None
        return cls(uri, meta) if isinstance(meta, dict) else None

    def problem(self) -> str | None:
        """Each listed shard's footer must hold the rows meta.json lists for it, and the
        shards the train split's rows (a footer read per shard, no data)."""
        total = 0
        for shard in self.meta.get("shards", []):
            uri = storage.join(self.uri, str(shard["file"]))
            try:
                with storage.parquet_file(uri) as pf:
                    rows = pf.metadata.num_rows
            except (KdflowError, OSError, pa.ArrowException) as exc:
                return f"shard {shard['file']} cannot be read ({exc})"
            if rows != int(shard["rows"]):
                return f"shard {shard['file']} holds {rows} rows, meta.json lists {shard['rows']}"
            total += rows
        if total != int(self.meta.get("rows", -1)):
            return f"its shards hold {total} rows; the train split has {self.meta.get('rows')}"
        return None

    def _widths(self) -> dict[str, tuple[int, Any]]:
        classes = int(self.meta["classes"])
        if not self.top_k:
            return {"train": (classes, np.float16)}
        return {"train_values": (self.top_k, np.float16),
                "train_indices": (self.top_k, index_dtype(classes))}

    def rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of `val` or of one train part."""
        if name != "val":
            return self.train_rows(start, int(self.meta["rows"]) if stop is None else stop)[name]
        with storage.parquet_file(storage.join(self.uri, "val.parquet")) as pf:
            val = _array(pf.read(columns=["val"]).column("val"), int(self.meta["classes"]),
                         np.float16)
        return val[start:stop]

    def train_rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows [start, stop) of the train logits, each placed by its `row`: reads only the
        shards whose rows overlap, and checks that every row came exactly once."""
        stop = min(stop, int(self.meta["rows"]))
        n = max(stop - start, 0)
        widths = self._widths()
        out = {name: np.empty((n, w), dtype) for name, (w, dtype) in widths.items()}
        seen, count = np.zeros(n, bool), 0
        for shard in self.meta["shards"]:
            if int(shard["last"]) < start or int(shard["first"]) >= stop:
                continue
            with storage.parquet_file(storage.join(self.uri, shard["file"])) as pf:
                table = pf.read(columns=["row", *widths])
            rows = table.column("row").to_numpy()
            keep = (rows >= start) & (rows < stop)
            at = rows[keep] - start
            for name, (w, dtype) in widths.items():
                out[name][at] = _array(table.column(name), w, dtype)[keep]
            seen[at] = True
            count += int(keep.sum())
        if count != n or not seen.all():
            raise DataError(
                f"teacher cache {self.uri}: rows {start}-{stop} came {count} times for "
                f"{n} rows ({int(n - seen.sum())} missing); delete the entry to refill it"
            )
        return out


def open_entry(uri: str) -> CacheEntry | ShardedEntry | None:
    """The entry at `uri` in its layout (a folder of shards, or a safetensors file)."""
    return ShardedEntry.open(uri) if is_sharded(uri) else CacheEntry.open(uri)
