"""Rows of a tensor in a safetensors file, read by byte range (a seek locally, a ranged GET
on S3), so a chunk of a split's decoded pixels or token ids costs that chunk's bytes, not
the file's.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte offsets, then the tensors' bytes, C-contiguous: rows
[start, stop) of the first axis are one contiguous range.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from kdflow.data import storage
from kdflow.errors import DataError

DTYPES = {"U8": np.uint8, "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64,
          "F16": np.float16, "F32": np.float32, "F64": np.float64}


@dataclass(frozen=True)
class TensorRows:
    """Where one tensor of a safetensors file lies: read its rows with `read`."""

    uri: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    """Byte offset of the tensor's first row in the file."""

    @classmethod
    def open(cls, uri: str, key: str) -> TensorRows:
        """The tensor `key` of `uri`, from the file's header alone (DataError when the
        header is not a safetensors header or lacks `key`)."""
        size = int.from_bytes(storage.read_range(uri, 0, 8), "little")
        try:
            header = json.loads(storage.read_range(uri, 8, size))
            entry = header[key]
            dtype = np.dtype(DTYPES[entry["dtype"]])
            shape = tuple(int(n) for n in entry["shape"])
            begin, end = (int(n) for n in entry["data_offsets"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{uri}: not a safetensors file holding {key!r} ({exc})") from exc
        if end - begin != math.prod(shape) * dtype.itemsize or not shape:
            raise DataError(f"{uri}: the header's {key!r} does not match its bytes")
        return cls(uri, dtype, shape, 8 + size + begin)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the first axis (clipped to the tensor), writable."""
        stop = max(0, min(stop, self.shape[0]))
        start = max(0, min(start, stop))
        row = math.prod(self.shape[1:]) * self.dtype.itemsize
        data = storage.read_range(self.uri, self.offset + start * row, (stop - start) * row)
        if len(data) != (stop - start) * row:
            raise DataError(f"{self.uri}: truncated: rows {start}-{stop} are not all there")
        return np.frombuffer(bytearray(data), self.dtype).reshape(stop - start, *self.shape[1:])
