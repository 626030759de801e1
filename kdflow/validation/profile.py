"""A contract profiled from a trusted reference dataset, which later runs are held to.

`profile_contract` (a DataFrame) and `profile_dataset` (a Parquet/CSV file, in bounded
memory) scan the reference once and widen what they saw by the slack below.
"""

from __future__ import annotations

import math
import typing

from kdflow.errors import DataError
from kdflow.validation.contract import DataContract, FeatureSpec, class_sort_key
from kdflow.validation.scan import SplitScan, scan_frame, scan_uri

if typing.TYPE_CHECKING:
    import pandas as pd


# Slack added to a profiled reference so that a fresh sample of the same source passes.
PROFILE_RANGE_MARGIN = 0.5
"""Ranges widen by this fraction of (max - min) on each side: fresh data from the same
source passes (a Gaussian feature's profiled range is then about ±5σ), while unit and
sentinel errors (0-255 instead of 0-1, -999 for missing) still fail."""
PROFILE_SLACK = 1.5
"""Observed null fractions, duplicate fractions and class imbalance are multiplied by this."""


def profile_contract(
    df: pd.DataFrame, label_column: str = "label", input_shape: list[int] | None = None
) -> DataContract:
    """Profile a contract from a trusted in-memory reference dataset."""
    return contract_from_scan(scan_frame(df, label_column), input_shape)


def profile_dataset(
    uri: str, label_column: str = "label", input_shape: list[int] | None = None
) -> DataContract:
    """Profile a contract from a reference file (Parquet/CSV, local or s3://) in bounded memory."""
    return contract_from_scan(scan_uri(uri, label_column), input_shape)


def contract_from_scan(scan: SplitScan, input_shape: list[int] | None = None) -> DataContract:
    """Turn a reference split's scan into a contract.

    Classes and feature types as observed; ranges widened by PROFILE_RANGE_MARGIN; null
    fractions, duplicates and imbalance observed times PROFILE_SLACK; per-class minimum half
    the smallest class, so an 80% training split of the same source still passes.
    """
    problems = _profile_problems(scan)
    if problems:
        raise DataError(f"{scan.name}: cannot profile a contract from it: " + "; ".join(problems))
    assert scan.label is not None  # a missing label is one of the problems
    counts = scan.label.counts
    features = {}
    for name, col in scan.numeric.items():
        low, high = col.finite_min, col.finite_max
        pad = (high - low) * PROFILE_RANGE_MARGIN or max(abs(high) * PROFILE_RANGE_MARGIN, 1.0)
        null_fraction = col.nulls / scan.rows
        features[name] = FeatureSpec(
            dtype="int" if col.integer and not col.nulls else "float",
            min=_round_down(low - pad),
            max=_round_up(high + pad),
            max_null_fraction=min(1.0, _round_up(null_fraction * PROFILE_SLACK))
            if null_fraction
            else None,
        )
    imbalance = max(counts.values()) / min(counts.values())
    duplicates = scan.duplicate_rows / scan.rows
    return DataContract(
        label_column=scan.label_column,
        classes=sorted(counts, key=class_sort_key),
        features=features,
        max_null_fraction=0.0,
        min_rows_per_class=max(1, min(counts.values()) // 2),
        max_class_imbalance=_round_up(max(imbalance * PROFILE_SLACK, 1.5)),
        max_duplicate_fraction=min(1.0, _round_up(max(duplicates * PROFILE_SLACK, 0.01))),
        on_constant_feature="warn" if scan.constant_features() else "fail",
        input_shape=input_shape,
    )


def _profile_problems(scan: SplitScan) -> list[str]:
    """Why this split cannot serve as a trusted reference (empty when it can)."""
    problems = []
    if scan.label is None:
        problems.append(f"label column {scan.label_column!r} is missing")
    elif scan.label.nulls or len(scan.label.counts) < 2:
        problems.append(
            f"label needs ≥ 2 classes and no nulls (has {len(scan.label.counts)} classes, "
            f"{scan.label.nulls} nulls)"
        )
    problems += [f"{name} is not numeric ({t.arrow_type})" for name, t in scan.text.items()]
    problems += [
        f"{name} has non-finite values" for name, s in scan.numeric.items() if s.posinf or s.neginf
    ]
    problems += [f"{name} has no finite value" for name, s in scan.numeric.items() if not s.finite]
    return problems


def _round_down(x: float) -> float:
    return -_round_up(-x)


def _round_up(x: float) -> float:
    """x rounded up to 4 significant digits, so profiled YAML stays readable."""
    if x == 0 or not math.isfinite(x):
        return x
    quantum = 10.0 ** (math.floor(math.log10(abs(x))) - 3)
    # -1e-9: 0.1 * 1.5 is 0.15000000000000002, which must stay 0.15
    return float(f"{math.ceil(x / quantum - 1e-9) * quantum:.4g}")
