"""The teacher-output cache of offline KD: each teacher's logits over the training split.

One file per (dataset, teacher, top-k) under `<storage>/teacher-cache/<dataset key>/`:
a safetensors file holding

- `train`: N × C float16 logits, or with top-k `train_values` (N × k float16) and
  `train_indices` (N × k int16, int32 past 32,767 classes), the k largest logits per row;
- `val`: the validation split's logits, always in full (ensemble weights and agreement);
- metadata: the dataset key, the teacher's weights hash, rows, classes, top-k.

The dataset key hashes the train and val Parquet files, so another split of the same table
(another seed) gets its own entry; the teacher's version is the SHA-256 of its weights.
A later run with the same data and teachers reuses the file. Rows are stored row-major, so
a Ray Train worker reads only its shard's byte range (a ranged GET on S3).

Memory: an entry holds N·C·2 bytes (60,000 × 10 classes: 1.2 MB; 1.28 M × 1,000: 2.6 GB);
at top-k, N·k·4 bytes with int16 indices (N·k·6 past 32,767 classes): 1.28 M × top-32 =
164 MB.
"""

from __future__ import annotations

import hashlib
import json
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from kdflow.data import storage

CACHE_FOLDER = "teacher-cache"
FORMAT_VERSION = 1
_DTYPES = {"F16": np.float16, "F32": np.float32, "I16": np.int16, "I32": np.int32,
           "I64": np.int64}


def dataset_key(dataset_uri: str | Path) -> str:
    """SHA-256 over the train and val Parquet files' hashes."""
    digest = hashlib.sha256()
    for split in ("train", "val"):
        digest.update(storage.sha256(storage.join(dataset_uri, f"{split}.parquet")).encode())
    return digest.hexdigest()


def entry_uri(root: str | Path, data_key: str, teacher_sha: str, top_k: int, tag: str = "") -> str:
    """Where an entry lives; `tag` names what else it depends on (a causal LM's `-T1`)."""
    name = f"{teacher_sha[:24]}{f'-top{top_k}' if top_k else ''}{tag}.safetensors"
    return storage.join(root, CACHE_FOLDER, data_key[:24], name)


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
class CacheEntry:
    """An entry's header: where each tensor's bytes are, read without loading the data."""

    uri: str
    meta: dict[str, Any]
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

    def matches(self, meta: dict[str, Any]) -> bool:
        """True when the entry was written for exactly these data, teacher and top-k."""
        return self.meta.get("format") == FORMAT_VERSION and all(
            self.meta.get(k) == v for k, v in meta.items()
        )

    @property
    def top_k(self) -> int:
        return int(self.meta.get("top_k", 0))

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
