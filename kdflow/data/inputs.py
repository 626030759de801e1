"""What a data source hands a model: the rows' inputs, encoded by the model where it needs
its own encoding (`Encoder`: a tokenizer and its settings)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

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
