"""What a check found, in plain words (`Finding`), and the checks on the scan's exact counts.

These checks need counts and fractions over every row of a split (rows per class, class
imbalance, null fractions above zero, duplicates) or both splits (test classes ⊆ train
classes, leakage, KS drift on the two samples), which the scan has exactly. What a failed
GX expectation says is in `kdflow.validation.gx_findings`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kdflow.data.labels import LabelTypeError, class_keys
from kdflow.validation.column_stats import LabelStats
from kdflow.validation.contract import DataContract
from kdflow.validation.scan import SplitScan, ValidationSettings


@dataclass
class Finding:
    """One failed (or warned) check, in plain words, with what was seen and example rows."""

    check: str
    column: str | None
    message: str
    observed: Any = None
    sample_rows: list[dict[str, Any]] = field(default_factory=list)
    split: str | None = None
    expectation: str | None = None
    """The GX expectation type, when GX made the call; None for the scan's own checks."""
    severity: str = "failure"
    """`failure` stops the pipeline; `warning` is reported only."""


def scan_findings(scan: SplitScan, contract: DataContract, is_train: bool) -> list[Finding]:
    """Checks on exact counts and fractions of one split."""
    found: list[Finding] = []
    label = scan.label
    if label is not None and not label.holds_classes:
        message = (
            f"the label column has type {label.arrow_type}; kdflow needs class labels "
            "(integers or strings)"
        )
        found.append(Finding("label_type", contract.label_column, message, label.arrow_type))
    if label is not None and label.non_integer:
        message = (
            f"the label holds {label.non_integer:,} non-integer numbers; kdflow needs class "
            "labels (integers or strings), not regression targets"
        )
        found.append(Finding("label_type", contract.label_column, message, label.non_integer))
    for name, stats in scan.numeric.items():
        allowed = contract.null_fraction_allowed(name)
        fraction = stats.nulls / scan.rows
        if allowed > 0 and fraction > allowed:
            message = (
                f"{name} is null or NaN in {fraction:.2%} of rows; the contract allows "
                f"{allowed:.2%}"
            )
            rows = [{"row": r} for r in stats.rows.get("null", [])]
            found.append(Finding("null_fraction", name, message, fraction, rows))
    if is_train and not scan.features:
        message = (
            "there are no feature columns, only the label; kdflow needs features to learn from"
        )
        found.append(Finding("no_features", None, message, scan.columns))
    if is_train and label is not None and label.counts:
        found += _class_findings(label, contract)
    if is_train and contract.input_shape is not None and contract.features is None:
        needed = math.prod(contract.input_shape)
        if needed != len(scan.features):
            message = (
                f"input_shape {contract.input_shape} needs {needed} features, but the data has "
                f"{len(scan.features)} feature columns; fix --input-shape or the columns"
            )
            found.append(Finding("input_shape", None, message, len(scan.features)))
    fraction = scan.duplicate_rows / scan.rows
    # Text data: repeated texts warn instead (`text_checks`), with their conflicting labels.
    if fraction > contract.max_duplicate_fraction and not contract.is_text:
        message = (
            f"{scan.duplicate_rows:,} of {scan.rows:,} rows ({fraction:.2%}) repeat an earlier "
            f"row; the contract allows {contract.max_duplicate_fraction:.2%}"
        )
        found.append(Finding("duplicates", None, message, fraction, scan.duplicate_examples))
    for finding in found:
        finding.split = scan.split
    return found


def _class_findings(label: LabelStats, contract: DataContract) -> list[Finding]:
    """Per-class minimum and class imbalance of the training split."""
    found = []
    counts = dict(label.sorted_counts())
    small = {c: n for c, n in counts.items() if n < contract.min_rows_per_class}
    if small:
        message = (
            f"{len(small)} class(es) have fewer than {contract.min_rows_per_class:,} training "
            f"rows: {counted(small)}"
        )
        observed = {str(c): n for c, n in small.items()}
        found.append(Finding("rows_per_class", contract.label_column, message, observed))
    if len(counts) >= 2:
        big, tiny = max(counts, key=counts.__getitem__), min(counts, key=counts.__getitem__)
        ratio = counts[big] / counts[tiny]
        if ratio > contract.max_class_imbalance:
            message = (
                f"the largest class {big!r} ({counts[big]:,} rows) is {ratio:.1f}× the smallest "
                f"{tiny!r} ({counts[tiny]:,} rows); the contract allows "
                f"{contract.max_class_imbalance:g}×"
            )
            found.append(Finding("class_imbalance", contract.label_column, message, ratio))
    return found


def cross_split_findings(
    train: SplitScan, test: SplitScan, contract: DataContract, settings: ValidationSettings
) -> list[Finding]:
    """Test classes ⊆ train classes, no test row leaked from train, no feature drift."""
    found = []
    k = settings.example_rows
    if train.label is not None and test.label is not None:
        found += _test_class_findings(train.label, test.label, contract, k)
    if contract.check_leakage and not test.missing and not contract.is_text:  # text: warns
        leaked = np.flatnonzero(np.isin(test.feature_hash, train.feature_hash))
        if leaked.size:
            message = (
                f"{leaked.size:,} of {test.rows:,} test rows ({leaked.size / test.rows:.2%}) have "
                "the same features as a training row, so the test score would be inflated; "
                "deduplicate before splitting"
            )
            rows = [
                {
                    "test_row": int(r),
                    "train_row": int(np.argmax(train.feature_hash == test.feature_hash[r])),
                }
                for r in leaked[:k]
            ]
            found.append(Finding("leakage", None, message, int(leaked.size), rows))
    found += _drift_findings(train, test, contract)
    for finding in found:
        finding.split = "test"
    return found


def _test_class_findings(
    train: LabelStats, test: LabelStats, contract: DataContract, k: int
) -> list[Finding]:
    """Test classes ⊆ train classes, matched as `kdflow.data.labels.class_keys` matches
    them (1, 1.0 and "1" are one class); labels of kinds that cannot be matched ("a"
    against 1) are one finding naming both."""
    column = contract.label_column
    try:
        key = class_keys({"the test split": list(test.counts),
                          "the training split": list(train.counts)}, column)
    except LabelTypeError as exc:
        types = {"train": train.arrow_type, "test": test.arrow_type}
        return [Finding("label_type", column, str(exc), types)]
    trained = {key(c) for c in train.counts}
    unseen = {c: n for c, n in test.sorted_counts() if key(c) not in trained}
    if not unseen:
        return []
    message = (
        f"the test split has {len(unseen)} class(es) the training split lacks: "
        f"{counted(unseen)}"
    )
    rows = [{"row": test.first_rows[c], column: c} for c in list(unseen)[:k]]
    observed = {str(c): n for c, n in unseen.items()}
    return [Finding("test_classes", column, message, observed, rows)]


def _drift_findings(train: SplitScan, test: SplitScan, contract: DataContract) -> list[Finding]:
    """Two-sample KS test of each numeric feature, test sample vs train sample."""
    from scipy.stats import ks_2samp

    found = []
    for name in [f for f in train.numeric if f in test.numeric]:
        a, b = _finite(train.sample[name]), _finite(test.sample[name])
        if a.size < 2 or b.size < 2:
            continue
        result = ks_2samp(a, b, method="asymp")
        statistic, p_value = float(result.statistic), float(result.pvalue)
        if statistic > contract.max_drift_ks and p_value < contract.drift_p_value:
            message = (
                f"{name} drifted between train and test: KS statistic {statistic:.3f} "
                f"(p = {p_value:.2g}), the contract allows {contract.max_drift_ks:g}; "
                f"train mean {a.mean():.4g}, test mean {b.mean():.4g}"
            )
            observed = {"ks": statistic, "p_value": p_value}
            found.append(Finding("drift", name, message, observed))
    return sorted(found, key=lambda f: -f.observed["ks"])


def _finite(values: pd.Series) -> np.ndarray:
    array = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    return array[np.isfinite(array)]


def counted(counts: dict[Any, int], limit: int = 10) -> str:
    """'7' (12 rows), 'x' (1 row) …"""
    items = list(counts.items())
    shown = ", ".join(f"{c!r} ({n:,} row{'s' if n != 1 else ''})" for c, n in items[:limit])
    return shown + (f" … ({len(items) - limit} more)" if len(items) > limit else "")


def listing(values: Iterable[Any], limit: int = 10) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" … ({len(values) - limit} more)" if len(values) > limit else "")
