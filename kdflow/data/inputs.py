"""What a data source hands a model: the rows' inputs, encoded by the model where it needs
its own encoding (`Encoder`: a tokenizer and its settings)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from kdflow.data import storage

STREAM_ROWS = 65_536
"""Rows per batch when a split is streamed (teacher inference, statistics)."""


class Encoder(Protocol):
    """A model's own way from raw rows to its inputs (a tokenizer and its settings)."""

    fingerprint: str
    """Changes whenever `encode` would give other arrays (tokenizer files, max length)."""

    def encode(self, columns: Sequence[Sequence[str]]) -> np.ndarray:
        """Rows given column-wise (the text, and the pair's second text when there is
        one) as an int64 N × K × L array."""
        ...


def read_labels(uri: str, split: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows [start, stop) of a prepared split's `label` column (class indices, int64)."""
    table = storage.read_parquet_rows(
        storage.join(uri, f"{split}.parquet"), start, stop, columns=["label"]
    )
    return table.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
