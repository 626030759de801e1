"""Corpus data (kind `corpus`, for causal-lm): documents a causal LM reads as packed blocks.

The prepared splits keep the raw documents (`write_prepared_corpus`: a text column, or a
prompt and a completion column). A row of a corpus is not a document but a block of
`max_length` tokens that the model's encoder (`kdflow.models.lm_tokenizer.LMEncoder`)
packs the documents into, so every row count, row range and label needs the encoder:

    x: int64 N × 2 × L   token ids, and each token's segment (its document in the block)
    y: int64 N × L       next-token labels, -100 where a position has no target

Packing is done once per (dataset, split, encoder) and cached exactly as text
tokenization is (`kdflow.data.text`: in memory for the process, and under the cache root as
`token-cache/<split file sha256[:24]>/<encoder fingerprint[:24]>/<split>.safetensors`, int32
N × 3 × L with the labels as the third channel): the documents are read and the cache
kept by a `TextSource` over the same folder, so the two kinds cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from kdflow.data.inputs import STREAM_ROWS, Encoder
from kdflow.data.prepared import DatasetMeta, Split
from kdflow.data.text import TextSource
from kdflow.errors import ConfigError

CHANNELS = 3
"""What a corpus encoder packs per block: token ids, segments, labels."""


class CorpusSource:
    """A prepared corpus: documents in Parquet, read as the blocks a model's encoder packs."""

    def __init__(self, uri: str, meta: DatasetMeta, cache_root: str | None = None) -> None:
        self.uri, self.meta = uri, meta
        self._documents = TextSource(uri, meta, cache_root)

    @property
    def tokenize_seconds(self) -> float:
        """Time spent tokenizing and packing documents, cache hits excluded."""
        return self._documents.tokenize_seconds

    @tokenize_seconds.setter
    def tokenize_seconds(self, seconds: float) -> None:
        self._documents.tokenize_seconds = seconds

    def documents(self, split: str) -> int:
        """How many documents (rows of the prepared file) `split` has."""
        return int(self.meta.rows[split])

    def blocks(self, split: str, encoder: Encoder | None) -> np.ndarray:
        """The whole split packed by `encoder` (int64 N × 3 × L), packed at most once."""
        blocks = self._documents.encoded(split, _required(encoder))
        if blocks.ndim != 3 or blocks.shape[1] != CHANNELS:
            raise ConfigError(
                f"{self.uri}: a causal-lm corpus is read through a causal LM's encoder, which "
                f"packs {CHANNELS} channels per block (ids, segments, labels); this encoder "
                f"gives arrays of shape {blocks.shape}",
                option="--student",
            )
        return blocks

    def rows(self, split: str, encoder: Encoder | None = None) -> int:
        return len(self.blocks(split, encoder))

    def read(
        self, split: str, start: int = 0, stop: int | None = None, encoder: Encoder | None = None
    ) -> Split:
        blocks = self.blocks(split, encoder)[start:stop]
        # Copies: the loop pins and shards these; a strided view of the cache would not do.
        return Split(x=np.ascontiguousarray(blocks[:, :2]), y=np.ascontiguousarray(blocks[:, 2]))

    def stream(
        self, split: str, batch_rows: int = STREAM_ROWS, encoder: Encoder | None = None
    ) -> Iterator[np.ndarray]:
        blocks = self.blocks(split, encoder)
        for start in range(0, len(blocks), batch_rows):
            yield np.ascontiguousarray(blocks[start : start + batch_rows, :2])

    def texts(self, split: str, start: int = 0, stop: int | None = None) -> list[list[str]]:
        """Documents [start, stop) as prepared, column-wise: [texts] or [prompts,
        completions] (for training a tokenizer, or for generation prompts)."""
        return self._documents.texts(split, start, stop)

    def labels(
        self, split: str, start: int = 0, stop: int | None = None, encoder: Encoder | None = None
    ) -> np.ndarray:
        return np.ascontiguousarray(self.blocks(split, encoder)[start:stop, 2])

    def input_stats(self) -> tuple[list[float], list[float]]:
        return [], []  # token ids are not normalised


def _required(encoder: Encoder | None) -> Encoder:
    if encoder is None:
        raise ConfigError(
            "a causal-lm dataset (kind corpus) is read through a model's tokenizer: its rows "
            "are the blocks of tokens the tokenizer packs the documents into; give a causal "
            "LM (hf:, hf-config:, hf-from-teacher:)",
            option="--student",
        )
    return encoder
