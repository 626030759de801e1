"""Text data: one text column (and optionally the second text of a pair) and a label.

The prepared split keeps the raw text (`write_prepared` with `text_columns`); each model
tokenizes it with its own tokenizer (`Encoder`), so a teacher and a student need not share
a vocabulary for logit distillation. Tokenizing is done once per (dataset, split, encoder)
and cached, like the teachers' logits: in memory for the process, and, given a cache root
(the run's storage path), as a safetensors file that later steps and runs read back:

    <cache root>/token-cache/<split file sha256[:24]>/<encoder fingerprint[:24]>/<split>.safetensors

holding `inputs`, int32 N × K × L (the encoder's int64 arrays, narrowed: token ids, masks
and labels fit in 32 bits). `kdflow.data.corpus` caches packed corpus blocks the same way.
`tokenize_seconds` counts the time spent tokenizing (cache misses only).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from kdflow.data import storage
from kdflow.data.inputs import STREAM_ROWS, Encoder, read_labels
from kdflow.data.prepared import DatasetMeta, Split
from kdflow.data.tensor_rows import TensorRows
from kdflow.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TOKEN_CACHE = "token-cache"


class TextSource:
    """Text columns and a `label` column of class indices, in Parquet."""

    def __init__(self, uri: str, meta: DatasetMeta, cache_root: str | None = None) -> None:
        self.uri, self.meta, self.cache_root = uri, meta, cache_root
        self.tokenize_seconds = 0.0
        self._encoded: dict[tuple[str, str], np.ndarray] = {}
        self._split_keys: dict[str, str] = {}

    def rows(self, split: str, encoder: Encoder | None = None) -> int:
        return int(self.meta.rows[split])

    def texts(self, split: str, start: int = 0, stop: int | None = None) -> list[list[str]]:
        table = storage.read_parquet_rows(
            storage.join(self.uri, f"{split}.parquet"), start, stop, columns=self.meta.text_columns
        )
        return [
            [str(v) for v in table.column(c).to_pylist()] for c in self.meta.text_columns
        ]

    def labels(
        self, split: str, start: int = 0, stop: int | None = None, encoder: Encoder | None = None
    ) -> np.ndarray:
        return read_labels(self.uri, split, start, stop)

    def read(
        self, split: str, start: int = 0, stop: int | None = None, encoder: Encoder | None = None
    ) -> Split:
        encoder = _required(encoder)
        if stop is not None and (split, encoder.fingerprint) not in self._encoded:
            # A chunk (a streamed read, an evaluation chunk): its rows alone, from the
            # token cache by byte range, or tokenized where no cache is kept (rows pad to
            # the encoder's length: a chunk encodes as it does within the whole split).
            # With a cache root and no cache yet, the whole split is tokenized once, below.
            stop = min(stop, self.rows(split))
            uri = self._cache_uri(split, encoder)
            if uri is not None and storage.exists(uri):
                x = TensorRows.open(uri, "inputs").read(start, stop).astype(np.int64)
                return Split(x=x, y=self.labels(split, start, stop))
            if uri is None:
                x = encoder.encode(self.texts(split, start, stop))
                return Split(x=x, y=self.labels(split, start, stop))
        inputs = self.encoded(split, encoder)
        stop = len(inputs) if stop is None else min(stop, len(inputs))
        return Split(x=inputs[start:stop], y=self.labels(split, start, stop))

    def stream(
        self, split: str, batch_rows: int = STREAM_ROWS, encoder: Encoder | None = None
    ) -> Iterator[np.ndarray]:
        inputs = self.encoded(split, _required(encoder))
        for start in range(0, len(inputs), batch_rows):
            yield inputs[start : start + batch_rows]

    def input_stats(self) -> tuple[list[float], list[float]]:
        return [], []  # token ids are not normalised

    def encoded(self, split: str, encoder: Encoder) -> np.ndarray:
        """The whole split as `encoder` makes it (int64 N × K × L), tokenized at most once."""
        key = (split, encoder.fingerprint)
        if key in self._encoded:
            return self._encoded[key]
        uri = self._cache_uri(split, encoder)
        inputs = _read_cached(uri) if uri is not None else None
        if inputs is None:
            started = time.perf_counter()
            inputs = encoder.encode(self.texts(split))
            seconds = time.perf_counter() - started
            self.tokenize_seconds += seconds
            log.info("tokenized %s (%d rows) in %.2f s", split, len(inputs), seconds)
            if uri is not None:
                _write_cached(uri, inputs)
        self._encoded[key] = inputs
        return inputs

    def _cache_uri(self, split: str, encoder: Encoder) -> str | None:
        if not self.cache_root:
            return None
        if split not in self._split_keys:
            # The split file's own hash, not the dataset's: another seed or split fraction
            # of the same table gives other rows under the same split name.
            self._split_keys[split] = storage.sha256(storage.join(self.uri, f"{split}.parquet"))
        return storage.join(
            self.cache_root,
            TOKEN_CACHE,
            self._split_keys[split][:24],
            encoder.fingerprint[:24],
            f"{split}.safetensors",
        )


def _required(encoder: Encoder | None) -> Encoder:
    if encoder is None:
        raise ConfigError(
            "text data needs a model with a tokenizer (hf:, hf-config:, hf-from-teacher:); "
            "zoo and python: models read numeric columns",
            option="--student",
        )
    return encoder


def _read_cached(uri: str) -> np.ndarray | None:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    if not storage.exists(uri):
        return None
    try:
        inputs = load(storage.read_bytes(uri))["inputs"]
    except (SafetensorError, KeyError, OSError) as exc:
        log.warning("token cache %s unreadable (%s): tokenizing again", uri, exc)
        return None
    return inputs.astype(np.int64)


def _write_cached(uri: str, inputs: np.ndarray) -> None:
    from safetensors.numpy import save_file

    # Within int32, negatives included: a corpus's labels are -100 where nothing is learnt.
    limits = np.iinfo(np.int32)
    if inputs.size and (inputs.max() > limits.max or inputs.min() < limits.min):
        raise DataError(f"token ids outside int32 for the token cache {uri}")
    with tempfile.TemporaryDirectory(prefix="kdflow-tokens-") as tmp:
        path = Path(tmp) / "inputs.safetensors"
        save_file({"inputs": np.ascontiguousarray(inputs.astype(np.int32))}, str(path))
        storage.put_file(path, uri)
