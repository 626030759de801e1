"""Checks on text data: the contract's `text_columns` (a text, or a sentence pair) and a label.

The scan counts, for each text column over every row (`column_stats.scan_text_column`):
nulls, empty and blank values, and the characters and whitespace words of each row. GX
checks that each text column exists, is never null and never empty (`gx_suite`); what
those failures mean is `text_gx_failure`. The rest is here, from the scan's exact counts:
a column that is not text, a column with no text at all, whitespace-only values (which
GX's length check cannot see), the share of rows longer than `max_length` words, repeated
texts (and texts repeated with a different label), and test texts also in train.

Words are a lower bound of tokens (a subword tokenizer splits a word into one or more
tokens, and adds special tokens), so the share of rows with more words than `max_length`
is a lower bound of the share the tokenizer will truncate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kdflow.validation.column_stats import TextColumnStats
from kdflow.validation.contract import DataContract
from kdflow.validation.findings import Finding, listing
from kdflow.validation.scan import SplitScan, ValidationSettings

MOSTLY_NULL = 0.5
"""A text column null in more than this share of rows is reported as mostly null."""
_FLAGS = ("--text-column", "--text-pair-column")


def text_flag(contract: DataContract, column: str) -> str:
    """The command-line option that names this text column."""
    columns = contract.text_columns or []
    return _FLAGS[columns.index(column)] if column in columns[:2] else "--text-column"


def has_no_text(stats: TextColumnStats) -> bool:
    """Whether a text column's non-null values are all blank (there is at least one)."""
    return stats.holds_text and stats.blank > 0 and stats.with_text == 0


def text_split_findings(
    scan: SplitScan, contract: DataContract, settings: ValidationSettings
) -> tuple[list[Finding], dict[str, Any]]:
    """The scan's checks of one split's text columns, and its `text` statistics."""
    found: list[Finding] = []
    for name, stats in scan.text_columns.items():
        flag = text_flag(contract, name)
        if not stats.holds_text:
            found.append(_type_finding(name, stats, flag))
        elif stats.blank and not stats.empty:  # whitespace only: GX's length check passes
            found.append(blank_finding(name, stats, scan.rows, flag))
    over = _over_max_length(scan, contract)
    duplicates = _duplicate_texts(scan, settings.example_rows)
    statistics: dict[str, Any] = {
        "columns": {name: s.summary(scan.rows) for name, s in scan.text_columns.items()},
        "max_length": contract.max_length,
    }
    if over is not None:
        count, share = over
        statistics |= {"rows_over_max_length": count, "over_max_length_share": share}
        if share > contract.max_truncated_fraction:
            found.append(_truncation_finding(scan, count, share, contract))
    if duplicates is not None:
        count, conflicting, examples = duplicates
        statistics |= {
            "duplicate_texts": count,
            "duplicate_text_share": count / scan.rows,
            "conflicting_label_texts": conflicting,
        }
        if count:
            found.append(_duplicate_finding(scan, count, conflicting, examples))
    for finding in found:
        finding.split = scan.split
    return found, statistics


def text_leakage_findings(
    train: SplitScan, test: SplitScan, contract: DataContract, settings: ValidationSettings
) -> tuple[list[Finding], dict[str, Any]]:
    """Test rows whose text (or pair) is also a training text: a warning, and statistics."""
    if not contract.check_leakage or not _comparable(train) or not _comparable(test):
        return [], {}
    assert train.text_present is not None and test.text_present is not None
    train_hash = train.feature_hash[train.text_present]
    test_rows = np.flatnonzero(test.text_present)
    leaked = test_rows[np.isin(test.feature_hash[test_rows], train_hash)]
    statistics = {"leaked_rows": int(leaked.size), "leaked_share": leaked.size / test.rows}
    if not leaked.size:
        return [], statistics
    distinct = int(np.unique(test.feature_hash[leaked]).size)
    train_text_rows = np.flatnonzero(train.text_present)
    examples = [
        {
            "test_row": int(r),
            "train_row": int(train_text_rows[np.argmax(train_hash == test.feature_hash[r])]),
        }
        for r in leaked[: settings.example_rows]
    ]
    what, where = _what(test)
    message = (
        f"{leaked.size:,} of {test.rows:,} test rows ({leaked.size / test.rows:.2%}) have the "
        f"same {what} ({where}) as a training row ({distinct:,} distinct texts), so the test "
        "score would be inflated; drop those rows from the test split"
    )
    finding = Finding(
        "text_leakage",
        _joined(test),
        message,
        int(leaked.size),
        examples,
        split="test",
        severity="warning",
    )
    return [finding], statistics


def text_gx_failure(
    kind: str, column: str, scan: SplitScan, contract: DataContract
) -> tuple[Finding, list[int]] | None:
    """(finding, example rows) for a failed GX expectation on a text column."""
    flag = text_flag(contract, column)
    if kind == "expect_column_to_exist":
        message = (
            f"text column {column!r} is missing; the columns are {listing(scan.columns)}: "
            f"name the column of text with {flag}"
        )
        return Finding("text_column", column, message, observed=scan.columns), []
    stats = scan.text_columns.get(column)
    if stats is None:
        return None
    if kind == "expect_column_values_to_not_be_null":
        return _null_finding(column, stats, scan.rows, flag), stats.null_rows
    if kind == "expect_column_value_lengths_to_be_between":
        rows = list(dict.fromkeys(stats.empty_rows + stats.blank_rows))
        return blank_finding(column, stats, scan.rows, flag), rows
    return None


def _type_finding(name: str, stats: TextColumnStats, flag: str) -> Finding:
    if stats.arrow_type.startswith(("int", "uint", "float", "double", "halffloat", "decimal")):
        message = (
            f"column {name} is numeric; {flag} needs a column of text: name the text column, "
            "or leave --text-column out to train on numeric features"
        )
    else:
        message = (
            f"column {name} has type {stats.arrow_type}, not text; {flag} needs a column of "
            "text (strings): name the text column"
        )
    return Finding("text_type", name, message, stats.arrow_type)


def _null_finding(name: str, stats: TextColumnStats, rows: int, flag: str) -> Finding:
    share = stats.nulls / rows
    counted = f"{stats.nulls:,} of {rows:,} rows ({share:.2%})"
    column = f"text column {name!r}"
    if stats.nulls == rows:
        message = f"{column} is null in every row ({rows:,}); {flag} must name a column of text"
    elif share > MOSTLY_NULL:
        message = (
            f"{column} is mostly null: {counted} have no text; check that {flag} names the "
            "right column, or drop the rows without text"
        )
    else:
        message = f"{column} is null in {counted}; every row needs a text: drop or fill those rows"
    observed = {"nulls": stats.nulls, "share": share}
    return Finding("text_nulls", name, message, observed)


def blank_finding(name: str, stats: TextColumnStats, rows: int, flag: str) -> Finding:
    """Empty or whitespace-only values: a failure when no row has text, else a warning."""
    observed = {"blank": stats.blank, "share": stats.blank / rows}
    if has_no_text(stats):
        message = (
            f"text column {name!r} holds no text: all {stats.blank:,} non-null values are empty "
            f"or blank; {flag} must name a column that holds text"
        )
        return Finding("text_empty", name, message, observed)
    message = (
        f"text column {name!r} is empty or blank in {stats.blank:,} of {rows:,} rows "
        f"({stats.blank / rows:.2%}); those rows carry no text: drop or fill them"
    )
    return Finding("text_empty", name, message, observed, severity="warning")


def _truncation_finding(
    scan: SplitScan, count: int, share: float, contract: DataContract
) -> Finding:
    what, where = _what(scan)
    together = " together" if what == "text pair" else ""
    message = (
        f"{share:.2%} of rows ({count:,} of {scan.rows:,}) have more whitespace words in "
        f"{where}{together} than max_length {contract.max_length} tokens, so at least that "
        "share is truncated (a lower bound: subword tokens ≥ words); raise --max-length or "
        "shorten the texts"
    )
    observed = {"rows_over_max_length": count, "share": share, "max_length": contract.max_length}
    return Finding("text_truncation", _joined(scan), message, observed, severity="warning")


def _duplicate_finding(
    scan: SplitScan, count: int, conflicting: int, examples: list[dict[str, Any]]
) -> Finding:
    rows = scan.rows
    if conflicting:
        advice = (
            f", and {conflicting:,} texts appear with different labels; deduplicate the texts "
            "and fix or drop the conflicting labels"
        )
    else:
        advice = "; deduplicate the texts (each repeat weighs one more row in training)"
    what, where = _what(scan)
    message = (
        f"{count:,} of {rows:,} rows ({count / rows:.2%}) repeat the {what} of an earlier row "
        f"({where}){advice}"
    )
    observed = {"duplicate_texts": count, "conflicting_label_texts": conflicting}
    return Finding(
        "text_duplicates", _joined(scan), message, observed, examples, severity="warning"
    )


def _comparable(scan: SplitScan) -> bool:
    """Whether the split's texts can be compared by hash: every text column present, as text."""
    return (
        scan.text_present is not None
        and bool(scan.text_columns)
        and not scan.missing
        and all(s.holds_text for s in scan.text_columns.values())
    )


def _joined(scan: SplitScan) -> str:
    return " + ".join(scan.features)


def _what(scan: SplitScan) -> tuple[str, str]:
    """("text", "column 'review'") or ("text pair", "columns 'premise' + 'hypothesis'")."""
    if len(scan.features) == 1:
        return "text", f"column {scan.features[0]!r}"
    return "text pair", "columns " + " + ".join(repr(c) for c in scan.features)


def _over_max_length(scan: SplitScan, contract: DataContract) -> tuple[int, float] | None:
    """Rows whose words (summed over a pair) exceed max_length, and their share of the split."""
    if not _comparable(scan):
        return None
    words = sum(np.maximum(s.word_counts(), 0) for s in scan.text_columns.values())
    count = int((np.asarray(words) > contract.max_length).sum())
    return count, count / scan.rows


def _duplicate_texts(scan: SplitScan, k: int) -> tuple[int, int, list[dict[str, Any]]] | None:
    """Rows repeating an earlier text, texts seen with more than one label, first examples."""
    if not _comparable(scan):
        return None
    assert scan.text_present is not None
    rows = np.flatnonzero(scan.text_present)
    texts = scan.feature_hash[rows]
    _, first, inverse = np.unique(texts, return_index=True, return_inverse=True)
    earlier = rows[first[inverse]]
    repeats = np.flatnonzero(earlier != rows)
    # A text with two distinct (text, label) row hashes has conflicting labels.
    pairs = np.unique(np.stack([texts, scan.row_hash[rows]]), axis=1)
    _, per_text = np.unique(pairs[0], return_counts=True)
    examples = [
        {
            "row": int(rows[i]),
            "same_text_as_row": int(earlier[i]),
            "label_differs": bool(scan.row_hash[rows[i]] != scan.row_hash[earlier[i]]),
        }
        for i in repeats[:k]
    ]
    return int(repeats.size), int((per_text > 1).sum()), examples
