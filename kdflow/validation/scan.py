"""The streaming scan: one pass over a split gives exact statistics, row hashes and a sample.

Each split is read 16 columns × 64 Ki rows at a time (`kdflow.data.tables.TableSource`);
the per-column counts live in `kdflow.validation.column_stats`. The 64-bit hash of every
row (16 bytes a row: 16 MB for 1 M rows) gives duplicates, test-vs-train leakage and the
dataset hash exactly; the seeded sample is what GX validates (`kdflow.validation.gx_suite`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from kdflow.data.tables import BATCH_ROWS, RowCollector, TableSource, column_groups, open_table
from kdflow.errors import ConfigError
from kdflow.validation.column_stats import (
    LabelStats,
    NumericStats,
    TextColumnStats,
    TextStats,
    is_class_type,
    is_feature_number_type,
    is_text_type,
    scan_label,
    scan_numeric,
    scan_text,
    scan_text_column,
)
from kdflow.validation.contract import DataContract

_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass
class ValidationSettings:
    """How a validation run reads the data (not what the data must be: that is the contract)."""

    sample_rows: int = 50_000
    """Rows per split that GX validates (a seeded uniform sample, plus every flagged row)."""
    seed: int = 0
    """Seed of the sample."""
    batch_rows: int = BATCH_ROWS
    """Rows per streamed batch."""
    example_rows: int = 5
    """Offending rows kept per check and column, to show in the report."""

    def __post_init__(self) -> None:
        for name in ("sample_rows", "batch_rows", "example_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1", option=name)


@dataclass
class SplitScan:
    """Everything the validator knows about one split after one streaming pass."""

    split: str
    name: str
    label_column: str
    rows: int
    columns: list[str]
    types: dict[str, str]
    features: list[str]
    missing: list[str]
    extra: list[str]
    label: LabelStats | None
    numeric: dict[str, NumericStats]
    text: dict[str, TextStats]
    feature_hash: np.ndarray
    row_hash: np.ndarray
    sample: pd.DataFrame
    duplicate_rows: int = 0
    duplicate_examples: list[dict[str, int]] = field(default_factory=list)
    text_columns: dict[str, TextColumnStats] = field(default_factory=dict)
    """The contract's text columns present in the split (text data only)."""
    text_present: np.ndarray | None = None
    """Per row: every text column holds a word (text data only; None otherwise)."""

    @property
    def content_hash(self) -> str:
        digest = hashlib.sha256(json.dumps(self.types, sort_keys=True).encode())
        digest.update(self.row_hash.tobytes())
        return digest.hexdigest()

    def constant_features(self) -> list[str]:
        return [name for name, s in self.numeric.items() if s.other_row is None]

    def statistics(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "columns": len(self.columns),
            "label": None
            if self.label is None
            else {
                "type": self.label.arrow_type,
                "counts": {str(k): v for k, v in self.label.sorted_counts()},
                "nulls": self.label.nulls,
            },
            "features": {name: s.summary() for name, s in self.numeric.items()}
            | {
                name: {"type": t.arrow_type, "non_numeric": t.non_numeric}
                for name, t in self.text.items()
            },
            "duplicate_rows": self.duplicate_rows,
            "content_hash": self.content_hash,
        }


def scan_uri(uri: str, label_column: str, settings: ValidationSettings | None = None) -> SplitScan:
    """The exact streaming statistics of one file (what `profile_dataset` builds on)."""
    with open_table(uri) as source:
        return scan_source(
            source, "reference", label_column, None, DataContract(label_column), settings
        )


def scan_frame(
    frame: pd.DataFrame, label_column: str, settings: ValidationSettings | None = None
) -> SplitScan:
    """The exact statistics of an in-memory table (what `profile_contract` builds on)."""
    source = TableSource.from_frame(frame, "reference")
    return scan_source(
        source, "reference", label_column, None, DataContract(label_column), settings
    )


def scan_source(
    source: TableSource,
    split: str,
    label_column: str,
    features: list[str] | None,
    contract: DataContract,
    settings: ValidationSettings | None,
) -> SplitScan:
    """One streaming pass over a split: exact statistics, row hashes and a seeded sample."""
    settings = settings or ValidationSettings()
    k = settings.example_rows
    schema = source.schema
    columns = list(schema.names)
    if features is None:
        features = [c for c in columns if c != label_column]
    present = [f for f in features if f in schema.names]
    has_label = label_column in schema.names
    extra = [c for c in columns if c != label_column and c not in features]
    n = source.num_rows
    label = None
    if has_label:
        label_type = schema.field(label_column).type
        label = LabelStats(str(label_type), holds_classes=is_class_type(label_type))
    numeric: dict[str, NumericStats] = {}
    text: dict[str, TextStats] = {}
    texts: dict[str, TextColumnStats] = {}
    for name in present:
        arrow_type = schema.field(name).type
        if contract.text_columns is not None:
            texts[name] = TextColumnStats(str(arrow_type), holds_text=is_text_type(arrow_type))
            continue
        # An all-null column (Arrow type null) counts as numeric: its nulls are the finding.
        if is_feature_number_type(arrow_type) or pa.types.is_null(arrow_type):
            numeric[name] = NumericStats(integer=pa.types.is_integer(arrow_type))
        else:
            text[name] = TextStats(str(arrow_type))
    feature_hash = np.zeros(n, dtype=np.uint64)
    label_hash = np.zeros(n, dtype=np.uint64)
    text_present = np.ones(n, dtype=bool) if contract.text_columns is not None else None
    sample = RowCollector(_sample_rows(n, settings))
    order = ([label_column] if has_label else []) + present + extra
    with np.errstate(over="ignore", invalid="ignore"):
        for group in column_groups(order):
            offset = 0
            for batch in source.iter_batches(group, settings.batch_rows):
                sample.add(batch, offset)
                rows = slice(offset, offset + batch.num_rows)
                for name, array in zip(batch.schema.names, batch.columns, strict=True):
                    if name == label_column and label is not None:
                        label_hash[rows] = scan_label(label, array, offset, k)
                        continue
                    if name in numeric:
                        spec = (contract.features or {}).get(name)
                        values = scan_numeric(numeric[name], array, offset, k, spec)
                    elif name in text:
                        values = scan_text(text[name], array, offset, k)
                    elif name in texts and text_present is not None:
                        values, has_words = scan_text_column(texts[name], array, offset, k)
                        text_present[rows] &= has_words
                    else:
                        continue  # an extra column: sampled, not hashed
                    feature_hash[rows] = feature_hash[rows] * _MIX + pd.util.hash_array(values)
                offset += batch.num_rows
        row_hash = feature_hash * _MIX + label_hash
    scan = SplitScan(
        split=split,
        name=source.name,
        label_column=label_column,
        rows=n,
        columns=columns,
        types={c: str(schema.field(c).type) for c in columns},
        features=features,
        missing=[f for f in features if f not in schema.names],
        extra=extra,
        label=label,
        numeric=numeric,
        text=text,
        feature_hash=feature_hash,
        row_hash=row_hash,
        sample=sample.frame(),
        text_columns=texts,
        text_present=text_present,
    )
    scan.duplicate_rows, scan.duplicate_examples = _duplicates(row_hash, k)
    return scan


def _sample_rows(n: int, settings: ValidationSettings) -> np.ndarray:
    """Sorted row numbers of a seeded uniform sample (every row when n ≤ sample_rows)."""
    if n <= settings.sample_rows:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(settings.seed)
    return np.sort(rng.choice(n, size=settings.sample_rows, replace=False)).astype(np.int64)


def _duplicates(row_hash: np.ndarray, k: int) -> tuple[int, list[dict[str, int]]]:
    """How many rows repeat an earlier row, and the first k as {row, same_as_row}."""
    _, first, inverse = np.unique(row_hash, return_index=True, return_inverse=True)
    earlier = first[inverse]
    repeats = np.flatnonzero(earlier != np.arange(row_hash.size))
    examples = [{"row": int(r), "same_as_row": int(earlier[r])} for r in repeats[:k]]
    return int(repeats.size), examples
