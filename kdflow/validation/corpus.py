"""The validate step for causal-lm corpora: read the documents, check them, split them, and
write the prepared corpus (`kdflow.data.corpus`).

A corpus is a table (Parquet, CSV or JSON Lines) with a text column (`--text-column`), or
a prompt and a completion column (`--prompt-column`, `--completion-column`). Reading
refuses, with one line naming the option and the file, what cannot be a corpus at all: a
column that does not exist, a column that is not text (numbers, bytes), a corpus without
any text, and one too small for a train, a val and a test split. What can be fixed is
fixed and reported as a warning: documents without text (a null in any column, or a
blank text or completion) are dropped, and values longer than `MAX_DOCUMENT_CHARS` are
cut to it. A blank prompt is kept: the completion is then learnt without one.

GX Core runs a suite on each file's corpus columns (`kdflow.validation.corpus_gx`: a
seeded sample plus the rows the exact checks flagged, as for tables): each column exists,
is never null, holds at least one character (the text or completion) and at most
`MAX_DOCUMENT_CHARS`. The exact checks over every row make the findings (GX's length
check cannot see whitespace-only values); GX names the expectation each one failed, and
says so itself where no exact check explains a failure. The findings go into the same
`ValidationReport` as tabular data, so the Markdown report and the summary read the same.

Documents are split, seeded, into train/val/test (test from `--test-data` when given),
none of them empty; statistics per split (documents, characters, words) and the cleaning
counts go into the report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from kdflow.config import DataConfig
from kdflow.data.prepared import DatasetMeta, frame_sha256, write_prepared_corpus
from kdflow.data.tables import open_table
from kdflow.errors import ConfigError, DataError, KdflowError
from kdflow.validation.column_stats import is_number_type, is_text_type
from kdflow.validation.corpus_gx import run_corpus_gx
from kdflow.validation.findings import Finding, listing
from kdflow.validation.gx_suite import import_gx_in_background
from kdflow.validation.report import ValidationReport
from kdflow.validation.scan import ValidationSettings

log = logging.getLogger(__name__)

MAX_DOCUMENT_CHARS = 1_000_000
"""Longest value kept whole (about 250 k tokens): a longer one is most likely a whole
dump in one cell, and is cut to this, with a warning."""


@dataclass
class FileCounts:
    """What cleaning one file's documents found: rows read, dropped and cut."""

    rows: int
    nulls: int = 0
    blank: int = 0
    truncated: int = 0
    null_rows: list[int] = field(default_factory=list)
    blank_rows: list[int] = field(default_factory=list)
    truncated_rows: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        dropped = self.nulls + self.blank
        return {"rows": self.rows, "nulls": self.nulls, "blank": self.blank,
                "dropped": dropped, "documents": self.rows - dropped,
                "truncated": self.truncated}


@dataclass
class CorpusData:
    """A validated corpus: its split documents, the report, and the dataset hash."""

    columns: list[str]
    splits: dict[str, pd.DataFrame]
    report: ValidationReport
    sha256: str


def corpus_flags(cfg: DataConfig) -> dict[str, str]:
    """Each corpus column and the option that names it."""
    if cfg.prompt_column and cfg.completion_column:
        return {cfg.prompt_column: "--prompt-column", cfg.completion_column: "--completion-column"}
    if cfg.text_column:
        return {cfg.text_column: "--text-column"}
    raise ConfigError(
        "--task causal-lm needs --text-column, or --prompt-column with --completion-column",
        option="--text-column",
    )


def validate_corpus(
    cfg: DataConfig,
    seed: int,
    docs_dir: Path | None = None,
    report_path: Path | None = None,
    settings: ValidationSettings | None = None,
) -> CorpusData:
    """Read, check, clean and split `--data` (and `--test-data`) as a corpus.

    Raises ConfigError or DataError, one line naming the option or column, for input that
    cannot be a corpus (after writing a failed report to `report_path`, when given, so the
    run still shows why); everything else is a finding of the returned report.
    """
    import_gx_in_background()  # GX loads (~5 s) while the documents are read
    settings = settings or ValidationSettings(seed=seed)
    flags = corpus_flags(cfg)
    columns = list(flags)
    files = {"train": cfg.data} | ({"test": cfg.test_data} if cfg.test_data else {})
    try:
        raw = {role: read_documents(uri, flags) for role, uri in files.items()}
        cleaned = {role: clean_documents(frame, columns, settings.example_rows)
                   for role, frame in raw.items()}
        for role, (documents, counts) in cleaned.items():
            _check_enough(files[role], documents, counts, flags, cfg, role)
    except KdflowError as exc:
        if report_path is not None:
            _write_refusal(report_path, exc)
        raise
    found = [f for role, (_, counts) in cleaned.items()
             for f in cleaning_findings(counts, role, flags)]
    flagged = {role: c.null_rows + c.blank_rows + c.truncated_rows
               for role, (_, c) in cleaned.items()}
    gx_found, data_docs, gx_version, gx_rows = run_corpus_gx(
        raw, flagged, found, columns, MAX_DOCUMENT_CHARS, docs_dir, settings
    )
    found += gx_found
    train = cleaned["train"][0]
    test = cleaned["test"][0] if "test" in cleaned else None
    splits = split_documents(train, test, cfg.test_fraction, cfg.val_fraction, seed)
    hashed = [raw["train"][columns]] + ([raw["test"][columns]] if "test" in raw else [])
    sha = frame_sha256(pd.concat(hashed, ignore_index=True))
    statistics: dict[str, Any] = {name: document_statistics(frame, columns)
                                  for name, frame in splits.items()}
    statistics["corpus"] = {
        "columns": columns,
        "max_document_chars": MAX_DOCUMENT_CHARS,
        "files": {role: counts.summary() | {"uri": files[role], "gx_rows": gx_rows[role]}
                  for role, (_, counts) in cleaned.items()},
        "truncated": sum(c.truncated for _, c in cleaned.values()),
        "dropped_blank": sum(c.nulls + c.blank for _, c in cleaned.values()),
    }
    failures = [f for f in found if f.severity == "failure"]
    report = ValidationReport(
        passed=not failures,
        failures=failures,
        warnings=[f for f in found if f.severity != "failure"],
        rows={name: len(frame) for name, frame in splits.items()},
        statistics=statistics,
        data_docs=data_docs,
        dataset_hash=sha,
        method=(
            "exact checks of every document (columns, types, nulls, blanks, lengths), and "
            f"GX Core {gx_version} on "
            + ", ".join(f"{gx_rows[r]:,} {r} rows" for r in raw)
            + f" (a seeded sample of at most {settings.sample_rows:,} rows per file plus "
            "every row the checks flagged); rows are the documents of each prepared split"
        ),
    )
    log.info(report.summary_line())
    return CorpusData(columns, splits, report, sha)


def prepare_corpus(
    data: CorpusData, cfg: DataConfig, dataset_dir: Path
) -> tuple[DatasetMeta, dict[str, dict[str, int]]]:
    """Write the prepared corpus folder; returns its meta and (no classes) empty counts."""
    meta = write_prepared_corpus(
        dataset_dir, data.splits, data.columns, cfg.tokens, data.sha256, cfg.data
    )
    log.info(
        "prepared a corpus of %s documents at %d tokens a block: %s",
        ", ".join(f"{len(f):,} {n}" for n, f in data.splits.items()),
        cfg.tokens,
        dataset_dir,
    )
    return meta, {}


def read_documents(uri: str, flags: dict[str, str]) -> pd.DataFrame:
    """The corpus columns of a file, as text (None for a null); refuses a missing column
    or one that is not text."""
    with open_table(uri) as source:
        for column, flag in flags.items():
            if column not in source.columns:
                raise ConfigError(
                    f"{uri}: {flag} {column!r} is not a column of the data; the columns are "
                    f"{listing(source.columns)}",
                    option=flag,
                )
            arrow_type = source.schema.field(column).type
            if not is_text_type(arrow_type):
                raise DataError(
                    f"{uri}: column {column!r} ({flag}) holds {_kind_of(arrow_type)}, not "
                    f"text; {flag} must name a column of text (strings)"
                )
        columns = list(flags)
        schema = pa.schema([source.schema.field(c) for c in columns])
        table = pa.Table.from_batches(list(source.iter_batches(columns)), schema=schema)
    frame = pd.DataFrame(
        {c: _decoded(table.column(c)).to_pandas().astype(object) for c in columns}
    )
    return frame.where(frame.notna(), None)


def _decoded(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column


def _kind_of(arrow_type: pa.DataType) -> str:
    if is_number_type(arrow_type) or pa.types.is_decimal(arrow_type):
        return f"numbers ({arrow_type})"
    if pa.types.is_boolean(arrow_type):
        return "booleans"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return "bytes"
    return f"values of type {arrow_type}"


def clean_documents(
    frame: pd.DataFrame, columns: list[str], example_rows: int = 5
) -> tuple[pd.DataFrame, FileCounts]:
    """The documents that hold text (row numbers of the file as the index), every value
    cut to `MAX_DOCUMENT_CHARS`, and what was dropped and cut.

    A document without text is one with a null in any column, or whose text (or
    completion: the last column) is empty or only whitespace.
    """
    counts = FileCounts(rows=len(frame))
    null = frame[columns].isna().any(axis=1).to_numpy()
    target = frame[columns[-1]]
    blank = ~null & target.fillna("").str.strip().str.len().eq(0).to_numpy()
    counts.nulls, counts.blank = int(null.sum()), int(blank.sum())
    counts.null_rows = np.flatnonzero(null)[:example_rows].tolist()
    counts.blank_rows = np.flatnonzero(blank)[:example_rows].tolist()
    kept = frame.loc[~(null | blank), columns].copy()
    long = np.zeros(len(kept), bool)
    for column in columns:
        over = kept[column].str.len().gt(MAX_DOCUMENT_CHARS).to_numpy()
        if over.any():
            kept.loc[over, column] = kept.loc[over, column].str.slice(0, MAX_DOCUMENT_CHARS)
            long |= over
    counts.truncated = int(long.sum())
    counts.truncated_rows = kept.index[long][:example_rows].tolist()
    return kept, counts


def _needed(cfg: DataConfig, role: str) -> tuple[int, str]:
    """Fewest usable documents a file needs, and what for: one per split made from it."""
    if role == "test":
        return 1, "one for the test split"
    parts = ["train"] + (["val"] if cfg.val_fraction > 0 else [])
    parts += [] if cfg.test_data else ["test"]
    if len(parts) == 1:
        return 1, "one for the train split"
    return len(parts), "one each for " + ", ".join(parts[:-1]) + f" and {parts[-1]}"


def _check_enough(
    uri: str,
    documents: pd.DataFrame,
    counts: FileCounts,
    flags: dict[str, str],
    cfg: DataConfig,
    role: str,
) -> None:
    """Refuse a file with no text at all, or too few documents for its splits."""
    target, flag = list(flags.items())[-1]
    if documents.empty:
        raise DataError(
            f"{uri}: the corpus has no text: all {counts.rows:,} documents are null, empty "
            f"or blank ({counts.nulls:,} with a null, {counts.blank:,} with no text in "
            f"{target!r}); {flag} must name a column that holds text"
        )
    needed, purpose = _needed(cfg, role)
    if len(documents) < needed:
        dropped = counts.nulls + counts.blank
        without = f" ({dropped:,} without text dropped)" if dropped else ""
        raise DataError(
            f"{uri}: {len(documents):,} usable document(s){without}; a causal-lm corpus "
            f"needs at least {needed}: {purpose}"
        )


def cleaning_findings(counts: FileCounts, role: str, flags: dict[str, str]) -> list[Finding]:
    """Dropped documents without text, and cut over-long values: warnings."""
    found = []
    columns = " + ".join(flags)
    dropped = counts.nulls + counts.blank
    if dropped:
        target = list(flags)[-1]
        message = (
            f"{dropped:,} of {counts.rows:,} documents ({dropped / counts.rows:.2%}) have no "
            f"text and are dropped: {counts.nulls:,} with a null, {counts.blank:,} with an "
            f"empty or blank {target!r}"
        )
        rows = [{"row": r, "why": "null"} for r in counts.null_rows]
        rows += [{"row": r, "why": "blank"} for r in counts.blank_rows]
        observed = {"nulls": counts.nulls, "blank": counts.blank}
        found.append(Finding("corpus_dropped", columns, message, observed, rows, split=role,
                             severity="warning"))
    if counts.truncated:
        message = (
            f"{counts.truncated:,} of {counts.rows:,} documents have a value longer than "
            f"{MAX_DOCUMENT_CHARS:,} characters and are cut to it; split such documents "
            "before training if their ends matter"
        )
        rows = [{"row": r} for r in counts.truncated_rows]
        found.append(Finding("corpus_truncated", columns, message, counts.truncated, rows,
                             split=role, severity="warning"))
    return found


def split_documents(
    documents: pd.DataFrame,
    test: pd.DataFrame | None,
    test_fraction: float,
    val_fraction: float,
    seed: int,
) -> dict[str, pd.DataFrame]:
    """Seeded train/val/test splits of the documents, none empty, each in file order (val
    is train when `val_fraction` is 0, as for tables; test is `test` when given)."""
    n = len(documents)
    order = np.random.default_rng(seed).permutation(n)
    n_test = 0 if test is not None else _share(n, test_fraction, n - 1 - (val_fraction > 0))
    rest = order[n_test:]
    n_val = _share(len(rest), val_fraction, len(rest) - 1) if val_fraction > 0 else 0

    def take(rows: np.ndarray) -> pd.DataFrame:
        return documents.iloc[np.sort(rows)].reset_index(drop=True)

    train = take(rest[n_val:])
    return {
        "train": train,
        "val": take(rest[:n_val]) if n_val else train,
        "test": take(order[:n_test]) if test is None else test.reset_index(drop=True),
    }


def _share(n: int, fraction: float, most: int) -> int:
    """round(n × fraction), at least 1 and at most `most`."""
    return int(min(most, max(1, round(n * fraction))))


def document_statistics(frame: pd.DataFrame, columns: list[str]) -> dict[str, Any]:
    """Documents, characters and whitespace words of a split (all columns together), with
    the characters and words of a document at the median, 95th percentile and maximum."""
    chars = sum(frame[c].str.len().to_numpy(np.int64) for c in columns)
    words = sum(frame[c].str.split().str.len().to_numpy(np.int64) for c in columns)
    chars, words = np.asarray(chars, np.int64), np.asarray(words, np.int64)
    return {
        "documents": len(frame),
        "characters": int(chars.sum()),
        "words": int(words.sum()),
        "chars_per_document": _percentiles(chars),
        "words_per_document": _percentiles(words),
    }


def _percentiles(values: np.ndarray) -> dict[str, float | None]:
    if not values.size:
        return {"p50": None, "p95": None, "max": None}
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
            "max": float(values.max())}


def _write_refusal(report_path: Path, error: KdflowError) -> None:
    """A failed report holding the one reason the input cannot be a corpus."""
    option = getattr(error, "option", None)
    finding = Finding("corpus_input", option, str(error))
    report = ValidationReport(
        passed=False, failures=[finding], warnings=[], rows={}, statistics={},
        method="the corpus could not be read as one (nothing else was checked)",
    )
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(report.to_markdown())
