"""What each failed GX expectation means, as a `Finding` a user can act on.

GX runs on a sample, so its own counts describe the sample; the findings here take the
counts of the whole split from the scan, and the example rows from the frame GX saw.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from kdflow.validation.column_stats import FLOAT32_MAX, native_value
from kdflow.validation.contract import DataContract
from kdflow.validation.findings import Finding, counted, listing
from kdflow.validation.scan import SplitScan
from kdflow.validation.text_checks import text_gx_failure


def gx_finding(
    outcome: Any, scan: SplitScan, frame: pd.DataFrame, contract: DataContract
) -> Finding | None:
    """A failed GX expectation in plain words, with the scan's exact counts and example rows."""
    config = outcome.expectation_config
    kind: str = config.type
    column: str | None = config.kwargs.get("column")
    if outcome.exception_info.get("raised_exception"):
        message = outcome.exception_info.get("exception_message")
        return Finding(
            "gx_error",
            column,
            f"GX could not run {kind} on {column or 'the table'}: {message}",
            split=scan.split,
            expectation=kind,
        )
    described = _describe_failure(kind, column, scan, contract)
    if described is None:
        return None
    finding, rows = described
    finding.split, finding.expectation = scan.split, kind
    finding.severity = "warning" if str(config.severity.value) == "warning" else "failure"
    finding.sample_rows = _example_rows(frame, rows, column, scan)
    return finding


def _describe_failure(
    kind: str, column: str | None, scan: SplitScan, contract: DataContract
) -> tuple[Finding, list[int]] | None:
    """(finding, example row numbers) for a failed expectation; None when nothing to say."""
    rows = f"of {scan.rows:,} rows"
    label = scan.label
    if column is not None and column in (contract.text_columns or []):
        return text_gx_failure(kind, column, scan, contract)
    if kind == "expect_column_to_exist":
        message = f"the label column {column!r} is missing; the columns are {listing(scan.columns)}"
        return Finding("label_column", column, message, observed=scan.columns), []
    if kind == "expect_table_columns_to_match_set":
        return _columns_finding(scan, contract)
    if column is None:
        return Finding(kind, None, f"{kind} failed"), []
    if kind == "expect_column_values_to_not_be_null" and column == contract.label_column:
        assert label is not None
        message = f"the label is null in {label.nulls:,} {rows}; every row needs a class"
        return Finding("label_nulls", column, message, observed=label.nulls), label.null_rows
    if kind == "expect_column_values_to_not_be_null":
        stats = scan.numeric[column]
        message = f"{column} has {stats.nulls:,} null or NaN values {rows}; none are allowed"
        return Finding("nulls", column, message, observed=stats.nulls), stats.rows["null"]
    if kind == "expect_column_values_to_be_in_set":
        assert label is not None and contract.classes is not None
        unknown = {c: n for c, n in label.sorted_counts() if c not in contract.classes}
        message = (
            f"the label has {len(unknown)} class(es) not in the contract: {counted(unknown)}; "
            f"the contract allows {listing(contract.classes)}"
        )
        by_class = {str(c): n for c, n in unknown.items()}
        return Finding("unknown_classes", column, message, by_class), [
            label.first_rows[c] for c in unknown
        ]
    if kind == "expect_column_unique_value_count_to_be_between" and column == contract.label_column:
        assert label is not None
        found = f"{len(label.counts)} class(es) only ({listing(label.counts)})"
        found = found if label.counts else "no class"
        message = f"the label has {found}; classification needs at least 2"
        return Finding("single_class", column, message, len(label.counts)), list(
            label.first_rows.values()
        )
    if kind == "expect_column_unique_value_count_to_be_between":
        stats = scan.numeric[column]
        if stats.first_value is None:
            message = f"{column} has no values at all (every row is null)"
            return Finding("constant_feature", column, message, None), []
        advice = (
            "set on_constant_feature: fail in the contract to refuse it"
            if contract.on_constant_feature == "warn"
            else "drop it, or set on_constant_feature: warn in the contract"
        )
        message = f"{column} is constant (every value is {stats.first_value:g}): {advice}"
        return Finding("constant_feature", column, message, stats.first_value), [
            r for r in (stats.first_row,) if r is not None
        ]
    if kind == "expect_column_values_to_be_in_type_list" and column in scan.text:
        text = scan.text[column]
        examples = ", ".join(_short(v) for v in dict.fromkeys(map(repr, text.values)))
        message = (
            f"{column} holds {text.arrow_type} values, not numbers: {text.non_numeric:,} {rows} "
            f"are not numeric (e.g. {examples})"
        )
        if not text.non_numeric:
            message = (
                f"{column} holds numbers stored as text ({text.arrow_type}): every value reads "
                "as a number, but kdflow takes the column's type as it is; store the column "
                "as numbers (in pandas: df[column].astype(float))"
            )
        observed = {"type": text.arrow_type, "non_numeric": text.non_numeric}
        return Finding("not_numeric", column, message, observed), text.rows
    if kind == "expect_column_values_to_be_in_type_list":
        wanted = contract.feature_spec(column).dtype
        message = (
            f"{column} has type {scan.types[column]}, the contract wants {wanted} "
            "(integer columns with nulls read as float)"
        )
        return Finding("feature_type", column, message, scan.types[column]), []
    if kind == "expect_column_values_to_be_between":
        return _range_finding(column, scan, contract)
    return Finding(kind, column, f"{kind} failed on {column}"), []


def _columns_finding(scan: SplitScan, contract: DataContract) -> tuple[Finding, list[int]] | None:
    """Missing contract features (failure) or extra columns (warning)."""
    if contract.is_text:  # each missing text column fails its own expect_column_to_exist
        if scan.missing or not scan.extra:
            return None
        message = (
            f"{len(scan.extra)} column(s) besides the text and the label are ignored: "
            f"{listing(scan.extra)}"
        )
        return Finding("extra_columns", None, message, observed=scan.extra), []
    if scan.missing:
        message = (
            f"{len(scan.missing)} feature column(s) of the contract are missing: "
            f"{listing(scan.missing)}"
        )
        return Finding("missing_columns", None, message, observed=scan.missing), []
    if scan.extra:
        message = (
            f"{len(scan.extra)} column(s) not in the contract will be ignored: "
            f"{listing(scan.extra)}"
        )
        return Finding("extra_columns", None, message, observed=scan.extra), []
    return None


def _range_finding(
    column: str, scan: SplitScan, contract: DataContract
) -> tuple[Finding, list[int]]:
    stats = scan.numeric[column]
    spec = contract.feature_spec(column)
    parts = []
    if stats.posinf or stats.neginf:
        parts.append(
            f"{stats.posinf + stats.neginf:,} infinite values "
            f"(+inf: {stats.posinf:,}, -inf: {stats.neginf:,})"
        )
    beyond = (stats.below or stats.above) and spec.min is None and spec.max is None
    if beyond:
        parts.append(
            f"{stats.below + stats.above:,} values beyond float32's range ±{FLOAT32_MAX:.3g} "
            f"(observed min {stats.finite_min:g}, max {stats.finite_max:g})"
        )
    elif stats.below or stats.above:
        parts.append(
            f"{stats.below + stats.above:,} values outside [{spec.min}, {spec.max}] "
            f"(observed min {stats.finite_min:g}, max {stats.finite_max:g})"
        )
    observed = {
        "posinf": stats.posinf,
        "neginf": stats.neginf,
        "below_min": stats.below,
        "above_max": stats.above,
        "min": stats.finite_min if stats.finite else None,
        "max": stats.finite_max if stats.finite else None,
    }
    check = "non_finite" if stats.posinf or stats.neginf else "range"
    message = f"{column} has {' and '.join(parts)} of {scan.rows:,} rows"
    if beyond:
        message += "; training reads float32, where they become infinity: rescale the column"
    rows = stats.rows.get("non_finite", []) + stats.rows.get("out_of_range", [])
    return Finding(check, column, message, observed), rows


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def _example_rows(
    frame: pd.DataFrame, rows: Iterable[int], column: str | None, scan: SplitScan
) -> list[dict[str, Any]]:
    """Rows of the GX frame as {row, label, column} dicts (all columns would be too wide)."""
    wanted = dict.fromkeys(c for c in (scan.label_column, column) if c is not None)
    keep = [c for c in wanted if c in frame.columns]
    found = [r for r in rows if r in frame.index]
    return [{"row": int(r), **{c: native_value(frame.at[r, c]) for c in keep}} for r in found]
