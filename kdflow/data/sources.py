"""Data sources: what the loop and the teacher tasks read rows through.

A data source yields a split's inputs and labels, in row ranges (a worker's shard) or in
batches that stream over the whole split (teacher inference), and gives the statistics the
models normalise with. Nothing reads all of a split at once unless it asks for it.

`open_source(dataset_uri)` picks the implementation named by the prepared dataset's
`meta.json` (`kind`, default `columns`): `ColumnSource` (numeric feature columns in
Parquet), `TextSource` (text columns, tokenized by each model's own `Encoder`),
`ImageSource` (decoded pixels) or `CorpusSource` (documents packed into blocks of tokens
by a causal LM's encoder, so even its row count needs the encoder). A kind adds an
implementation and an entry in `KINDS`; the loop does not change.

Inputs are one array per row block whatever the kind: float32 N × F for columns, and for
text an int64 N × K × L array that packs token ids, attention mask (and token types) as
`Encoder.encode` makes them, so gathering, sharding and pinning rows work the same. A
corpus's inputs are int64 N × 2 × L blocks (token ids, segments) and its labels int64
N × L next-token ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from kdflow.data import storage
from kdflow.data.inputs import STREAM_ROWS, Encoder, read_labels
from kdflow.data.prepared import DatasetMeta, Split
from kdflow.errors import ConfigError, DataError


class DataSource(Protocol):
    """A prepared dataset, read by split."""

    uri: str
    meta: DatasetMeta
    tokenize_seconds: float
    """Time spent encoding rows for models (text: tokenizing), cache hits excluded."""

    def rows(self, split: str, encoder: Encoder | None = None) -> int:
        """How many rows `split` has (a corpus: the blocks `encoder` packs it into; other
        kinds ignore `encoder`)."""
        ...

    def read(
        self, split: str, start: int = 0, stop: int | None = None, encoder: Encoder | None = None
    ) -> Split:
        """Rows [start, stop) of `split`: inputs (as `encoder` makes them, for kinds that
        need one) and class indices."""
        ...

    def stream(
        self, split: str, batch_rows: int = STREAM_ROWS, encoder: Encoder | None = None
    ) -> Iterator[np.ndarray]:
        """The inputs of `split` in order, `batch_rows` at a time (bounded memory)."""
        ...

    def texts(self, split: str, start: int = 0, stop: int | None = None) -> list[list[str]]:
        """Rows [start, stop) of the text columns, column-wise (kinds `text` and `corpus`,
        whose rows here are documents; [] otherwise)."""
        ...

    def labels(
        self, split: str, start: int = 0, stop: int | None = None, encoder: Encoder | None = None
    ) -> np.ndarray:
        """Rows [start, stop) of the class indices (int64), without the inputs (a corpus:
        the next-token labels of the blocks `encoder` packs, N × L)."""
        ...

    def input_stats(self) -> tuple[list[float], list[float]]:
        """Per-input mean and standard deviation over the training split."""
        ...


class ColumnSource:
    """Numeric feature columns and a `label` column of class indices, in Parquet (the
    validate step's output: `train/val/test.parquet` + `meta.json`)."""

    def __init__(self, uri: str, meta: DatasetMeta, cache_root: str | None = None) -> None:
        self.uri, self.meta = uri, meta
        self.tokenize_seconds = 0.0

    def rows(self, split: str, encoder: Encoder | None = None) -> int:
        return int(self.meta.rows[split])

    def read(
        self, split: str, start: int = 0, stop: int | None = None, encoder: Encoder | None = None
    ) -> Split:
        return load_rows(self.uri, split, self.meta, start, stop)

    def stream(
        self, split: str, batch_rows: int = STREAM_ROWS, encoder: Encoder | None = None
    ) -> Iterator[np.ndarray]:
        columns = self.meta.feature_columns
        with storage.parquet_file(storage.join(self.uri, f"{split}.parquet")) as pf:
            for batch in storage.iter_row_groups(pf, columns, batch_rows):
                yield feature_array(batch, columns)

    def texts(self, split: str, start: int = 0, stop: int | None = None) -> list[list[str]]:
        return []

    def labels(
        self, split: str, start: int = 0, stop: int | None = None, encoder: Encoder | None = None
    ) -> np.ndarray:
        return read_labels(self.uri, split, start, stop)

    def input_stats(self) -> tuple[list[float], list[float]]:
        return feature_stats(self.uri, self.meta)


def _text_source() -> type:
    from kdflow.data.text import TextSource

    return TextSource


def _image_source() -> type:
    from kdflow.data.images import ImageSource

    return ImageSource


def _corpus_source() -> type:
    from kdflow.data.corpus import CorpusSource

    return CorpusSource


KINDS: dict[str, Any] = {
    "columns": ColumnSource,
    "text": _text_source,
    "image": _image_source,
    "corpus": _corpus_source,
}
"""Data source kinds, by the `kind` a prepared dataset's meta.json names."""


def open_source(dataset_uri: str, cache_root: str | None = None) -> DataSource:
    """The data source of a prepared dataset (a folder or s3:// prefix). `cache_root` (a
    run's storage path) is where a kind that encodes its rows per model (text) keeps the
    encoded splits for later steps and runs."""
    values: dict[str, Any] = dict(_read_meta_json(dataset_uri))
    kind = values.setdefault("kind", "columns")
    if kind not in KINDS:
        raise ConfigError(
            f"{dataset_uri}: data of kind {kind!r}; this kdflow reads {', '.join(KINDS)}"
        )
    cls = KINDS[kind] if isinstance(KINDS[kind], type) else KINDS[kind]()
    source: DataSource = cls(dataset_uri, DatasetMeta(**values), cache_root)
    return source


def _read_meta_json(dataset_uri: str) -> dict[str, Any]:
    uri = storage.join(dataset_uri, "meta.json")
    if not storage.exists(uri):
        raise DataError(f"{dataset_uri}: not a prepared kdflow dataset (no meta.json)")
    meta: dict[str, Any] = storage.read_json(uri)
    return meta


def load_meta(dataset_uri: str) -> DatasetMeta:
    """A prepared dataset's meta.json (a folder or s3:// prefix)."""
    return open_source(dataset_uri).meta


def feature_array(table: Any, columns: list[str]) -> np.ndarray:
    """The feature columns of a Parquet table or batch as float32 N × F."""
    if table.num_rows == 0:
        return np.zeros((0, len(columns)), np.float32)
    return np.stack(
        [table.column(c).to_numpy(zero_copy_only=False) for c in columns], axis=1
    ).astype(np.float32, copy=False)


def load_rows(
    dataset_uri: str, split: str, meta: DatasetMeta, start: int = 0, stop: int | None = None
) -> Split:
    """Rows [start, stop) of a split, reading only the Parquet row groups that hold them."""
    table = storage.read_parquet_rows(
        storage.join(dataset_uri, f"{split}.parquet"),
        start,
        stop,
        columns=[*meta.feature_columns, "label"],
    )
    y = table.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
    return Split(x=feature_array(table, meta.feature_columns), y=y)


def feature_stats(dataset_uri: str, meta: DatasetMeta) -> tuple[list[float], list[float]]:
    """Mean and (unbiased) standard deviation of each feature over the whole training split.

    Streamed in float64, so every worker normalises with the same statistics whatever its
    shard, and memory stays at one batch of rows.
    """
    total = np.zeros(meta.n_features)
    squares = np.zeros(meta.n_features)
    n = 0
    with storage.parquet_file(storage.join(dataset_uri, "train.parquet")) as pf:
        for batch in storage.iter_row_groups(pf, meta.feature_columns, STREAM_ROWS):
            x = feature_array(batch, meta.feature_columns).astype(np.float64)
            total += x.sum(0)
            squares += (x * x).sum(0)
            n += len(x)
    mean = total / max(n, 1)
    var = (squares - n * mean * mean) / max(n - 1, 1)
    return mean.tolist(), np.sqrt(np.maximum(var, 0.0)).tolist()
