"""Exact statistics of one column over a whole split, updated one Arrow batch at a time.

`kdflow.validation.scan` passes each batch of a column to `scan_label`, `scan_numeric` or
`scan_text`: each counts over every row what the checks need, keeps the first few offending
row numbers, and returns the batch's values for the row hashes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from kdflow.validation.contract import class_sort_key

FLOAT32_MAX = float(np.finfo(np.float32).max)
"""Training reads features as float32: a larger magnitude would train as infinity."""


@dataclass
class NumericStats:
    """Exact statistics of one numeric feature column over a whole split."""

    integer: bool
    nulls: int = 0
    posinf: int = 0
    neginf: int = 0
    below: int = 0
    above: int = 0
    finite: int = 0
    finite_min: float = math.inf
    finite_max: float = -math.inf
    total: float = 0.0
    total_sq: float = 0.0
    first_row: int | None = None
    first_value: float | None = None
    other_row: int | None = None
    """First row whose value differs from the first row's (None: the column is constant)."""
    rows: dict[str, list[int]] = field(default_factory=dict)
    """First offending rows by check: null, non_finite, out_of_range."""

    def summary(self) -> dict[str, Any]:
        mean = self.total / self.finite if self.finite else math.nan
        var = self.total_sq / self.finite - mean * mean if self.finite else math.nan
        return {
            "nulls": self.nulls,
            "posinf": self.posinf,
            "neginf": self.neginf,
            "min": self.finite_min if self.finite else None,
            "max": self.finite_max if self.finite else None,
            "mean": mean,
            "std": math.sqrt(max(var, 0.0)) if self.finite else math.nan,
        }


@dataclass
class TextStats:
    """A feature column whose type is not numeric: how many values are not numbers."""

    arrow_type: str
    nulls: int = 0
    non_numeric: int = 0
    rows: list[int] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)


@dataclass
class TextColumnStats:
    """Exact statistics of one text column (`DataContract.text_columns`) over a whole split."""

    arrow_type: str
    holds_text: bool
    """Whether the type is text (strings, or nulls only); numbers, lists… are refused."""
    nulls: int = 0
    empty: int = 0
    """Values of zero characters (what GX's value-length expectation sees)."""
    blank: int = 0
    """Values that are empty or only whitespace (no word at all), nulls excluded."""
    null_rows: list[int] = field(default_factory=list)
    empty_rows: list[int] = field(default_factory=list)
    blank_rows: list[int] = field(default_factory=list)
    chars: list[np.ndarray] = field(default_factory=list)
    """Characters of each row, batch by batch (int32, -1 for a null): 4 bytes a row."""
    words: list[np.ndarray] = field(default_factory=list)
    """Whitespace-separated words of each row, batch by batch (int32, -1 for a null)."""

    @property
    def with_text(self) -> int:
        """Rows holding at least one word."""
        return sum(int((w > 0).sum()) for w in self.words)

    def word_counts(self) -> np.ndarray:
        return np.concatenate(self.words) if self.words else np.zeros(0, np.int32)

    def summary(self, rows: int) -> dict[str, Any]:
        """Type, nulls, blanks and length percentiles (characters and words, non-null rows)."""
        out: dict[str, Any] = {"type": self.arrow_type, "nulls": self.nulls}
        out["null_share"] = self.nulls / rows if rows else 0.0
        if not self.holds_text:
            return out
        out["blank"] = self.blank
        for key, parts in (("chars", self.chars), ("words", self.words)):
            lengths = np.concatenate(parts) if parts else np.zeros(0, np.int32)
            lengths = lengths[lengths >= 0]
            out[key] = {
                "p50": _percentile(lengths, 50),
                "p95": _percentile(lengths, 95),
                "max": int(lengths.max()) if lengths.size else None,
            }
        return out


def _percentile(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None


@dataclass
class LabelStats:
    """Exact class counts of the label column over a whole split."""

    arrow_type: str
    holds_classes: bool = True
    counts: dict[Any, int] = field(default_factory=dict)
    nulls: int = 0
    non_integer: int = 0
    first_rows: dict[Any, int] = field(default_factory=dict)
    null_rows: list[int] = field(default_factory=list)

    def sorted_counts(self) -> list[tuple[Any, int]]:
        """(class, rows) pairs in class order: integers first, then strings."""
        return sorted(self.counts.items(), key=lambda item: class_sort_key(item[0]))


def is_number_type(arrow_type: pa.DataType) -> bool:
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)


def is_feature_number_type(arrow_type: pa.DataType) -> bool:
    """A feature column of numbers: integers, floats, decimals, or booleans (0 and 1, as
    pandas' get_dummies writes one-hot columns)."""
    return (
        is_number_type(arrow_type)
        or pa.types.is_decimal(arrow_type)
        or pa.types.is_boolean(arrow_type)
    )


def is_class_type(arrow_type: pa.DataType) -> bool:
    """Whether a label column of this type holds classes (numbers, booleans or text)."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return (
        is_number_type(arrow_type)
        or pa.types.is_boolean(arrow_type)
        or pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
    )


def scan_label(stats: LabelStats, array: pa.Array, offset: int, k: int) -> np.ndarray:
    """Count classes and nulls of one label batch; return the batch's label hashes."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_boolean(array.type):
        array = array.cast(pa.int8())
    values = array.to_pandas()
    if not is_class_type(array.type):  # lists, dates…: counted as text, refused by label_type
        values = values.astype(str).where(values.notna())
    nulls = values.isna().to_numpy()
    if nulls.any():
        stats.nulls += int(nulls.sum())
        _keep(stats.null_rows, np.flatnonzero(nulls), offset, k)
    present = values[~nulls]
    if pd.api.types.is_float_dtype(present.dtype):
        fractional = present != np.floor(present)
        stats.non_integer += int(fractional.sum())
        present = present[~fractional].astype(np.int64)
    for value, count in present.value_counts(sort=False).items():
        value = native_value(value)
        stats.counts[value] = stats.counts.get(value, 0) + int(count)
    for position, value in present.drop_duplicates().items():
        stats.first_rows.setdefault(native_value(value), offset + int(position))
    return pd.util.hash_array(values.to_numpy())


def scan_numeric(
    stats: NumericStats, array: pa.Array, offset: int, k: int, spec: Any
) -> np.ndarray:
    """Update a numeric column's statistics with one batch; return the values as float64.
    Without a bound of the contract, the bounds are float32's (what training reads)."""
    if pa.types.is_decimal(array.type) or pa.types.is_boolean(array.type):
        array = array.cast(pa.float64())
    values = array.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    nan = np.isnan(values)
    inf = np.isinf(values)
    finite = values
    if nan.any() or inf.any():
        stats.nulls += int(nan.sum())
        stats.posinf += int((values == math.inf).sum())
        stats.neginf += int((values == -math.inf).sum())
        _keep(stats.rows.setdefault("null", []), np.flatnonzero(nan), offset, k)
        _keep(stats.rows.setdefault("non_finite", []), np.flatnonzero(inf), offset, k)
        finite = values[~(nan | inf)]
    if finite.size:
        stats.finite += finite.size
        stats.finite_min = min(stats.finite_min, float(finite.min()))
        stats.finite_max = max(stats.finite_max, float(finite.max()))
        stats.total += float(finite.sum())
        stats.total_sq += float(
            np.einsum("i,i->", finite, finite)
        )  # np.dot: BLAS threads stall on a busy host
    low = -FLOAT32_MAX if spec is None or spec.min is None else spec.min
    high = FLOAT32_MAX if spec is None or spec.max is None else spec.max
    if stats.finite_min < low or stats.finite_max > high:
        outside = np.isfinite(values) & ((values < low) | (values > high))
        stats.below += int((np.isfinite(values) & (values < low)).sum())
        stats.above += int((np.isfinite(values) & (values > high)).sum())
        _keep(stats.rows.setdefault("out_of_range", []), np.flatnonzero(outside), offset, k)
    if stats.other_row is None:
        _find_second_value(stats, values, nan, offset)
    return values


def _find_second_value(
    stats: NumericStats, values: np.ndarray, nan: np.ndarray, offset: int
) -> None:
    """Record the first row whose value differs from the first row's (non-constant proof)."""
    if stats.first_row is None:
        known = np.flatnonzero(~nan)
        if not known.size:
            return
        stats.first_row = offset + int(known[0])
        stats.first_value = float(values[known[0]])
    differs = np.flatnonzero(~nan & (values != stats.first_value))
    if differs.size:
        stats.other_row = offset + int(differs[0])


def scan_text(stats: TextStats, array: pa.Array, offset: int, k: int) -> np.ndarray:
    """Count the values of a non-numeric column that are not numbers; return them as objects."""
    values = array.to_pandas()
    nulls = values.isna()
    stats.nulls += int(nulls.sum())
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        bad = (~nulls & pd.to_numeric(values, errors="coerce").isna()).to_numpy()
    else:
        bad = (~nulls).to_numpy()
    stats.non_numeric += int(bad.sum())
    before = len(stats.rows)
    _keep(stats.rows, np.flatnonzero(bad), offset, k)
    stats.values.extend(native_value(values.iloc[r - offset]) for r in stats.rows[before:])
    return values.astype(str).to_numpy(dtype=object)


_WORD = r"[^\s\p{Z}]+"
"""A whitespace-separated word, Unicode spaces included (what Python's str.split() splits)."""


def scan_text_column(
    stats: TextColumnStats, array: pa.Array, offset: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Count nulls, blanks and lengths of one batch of a text column.

    Returns the batch's values as objects (for the row hashes) and whether each row holds
    a word (null and blank rows do not, and take no part in text duplicates or leakage).
    """
    import pyarrow.compute as pc

    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    values = array.to_pandas()
    nulls = values.isna().to_numpy()
    stats.nulls += int(nulls.sum())
    _keep(stats.null_rows, np.flatnonzero(nulls), offset, k)
    if not stats.holds_text or pa.types.is_null(array.type):
        chars = words = np.full(len(values), -1, dtype=np.int32)
    else:
        chars = pc.fill_null(pc.utf8_length(array), -1).to_numpy().astype(np.int32)
        words = pc.fill_null(pc.count_substring_regex(array, _WORD), -1)
        words = words.to_numpy().astype(np.int32)
        empty, blank = chars == 0, words == 0
        stats.empty += int(empty.sum())
        stats.blank += int(blank.sum())
        _keep(stats.empty_rows, np.flatnonzero(empty), offset, k)
        _keep(stats.blank_rows, np.flatnonzero(blank), offset, k)
    if stats.holds_text:
        stats.chars.append(chars)
        stats.words.append(words)
        present = words > 0
    else:
        present = ~nulls
    return values.astype(str).to_numpy(dtype=object), present


def is_text_type(arrow_type: pa.DataType) -> bool:
    """Whether a text column of this type holds text (strings, or only nulls)."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return (
        pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or pa.types.is_null(arrow_type)
    )


def _keep(found: list[int], positions: np.ndarray, offset: int, k: int) -> None:
    """Append the first positions (as row numbers) until `found` holds k rows."""
    room = k - len(found)
    if room > 0 and positions.size:
        found.extend(int(p) + offset for p in positions[:room])


def native_value(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
