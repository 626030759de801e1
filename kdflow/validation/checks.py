"""Data validation: a `DataContract` run as a GX Core suite on each split, plus exact scans.

How memory stays bounded (and the verdict stays exact)
-------------------------------------------------------
1. **Exact streaming scan.** Each split is read 16 columns × 64 Ki rows at a time
   (`kdflow.data.tables.TableSource.iter_batches`; CSV is first streamed into Parquet). The scan
   counts, over every row: nulls, ±inf, values outside the contract's range, class counts,
   text in numeric columns; it keeps the first few offending row numbers of each check and
   a 64-bit hash of every row (16 bytes a row: 16 MB for 1 M rows), from which duplicates,
   test-vs-train leakage and the dataset hash are computed exactly.
2. **GX on a sample.** The contract becomes a GX Core 1.x `ExpectationSuite` per split,
   run on a seeded uniform sample of at most `ValidationSettings.sample_rows` rows plus
   every row the scan flagged (and the first row of each class). So every row-level
   failure that exists anywhere in the file fails its expectation, with example rows, in
   the GX result and the Data Docs; a split no larger than the sample is validated whole.
3. **Aggregates from the scan.** Checks on counts and fractions (rows per class, class
   imbalance, duplicates, null fractions above zero) and the cross-split checks (test
   classes ⊆ train classes, leakage, KS drift on the two samples) use the exact scan.

Text data (`DataContract.text_columns`) takes the same three stages: the scan counts each
text column's nulls, blanks and lengths (4 + 4 bytes a row), GX checks that each exists and
is never null or empty, and `kdflow.validation.text_checks` adds the length, truncation,
duplicate-text and test-vs-train text checks; the other columns are ignored.

Peak memory is therefore one batch, the two samples and the row hashes, whatever the file
size; time is one read of the file plus a fixed GX cost per feature (see
`benchmarks/results/validation.md`).

`validate_dataset` (files) and `validate_frames` (DataFrames) run the three stages:
`kdflow.validation.scan`, `kdflow.validation.gx_suite`, `kdflow.validation.findings`;
`write_validated` then writes a split that passed, normalised for training.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from kdflow.data.tables import BATCH_ROWS, TableSource, open_table
from kdflow.errors import DataValidationError
from kdflow.validation.column_stats import is_number_type
from kdflow.validation.contract import DataContract
from kdflow.validation.findings import Finding, cross_split_findings, listing, scan_findings
from kdflow.validation.gx_suite import gx_frame, import_gx_in_background, run_gx
from kdflow.validation.report import ValidationReport
from kdflow.validation.scan import SplitScan, ValidationSettings, scan_source
from kdflow.validation.text_checks import text_leakage_findings, text_split_findings

log = logging.getLogger(__name__)


def validate_dataset(
    train_uri: str,
    test_uri: str | None,
    contract: DataContract,
    docs_dir: Path | None = None,
    settings: ValidationSettings | None = None,
) -> ValidationReport:
    """Validate Parquet/CSV files (local or s3://) against `contract`, in bounded memory.

    Raises DataError when a file cannot be read at all (missing, empty, truncated); every
    problem with the data itself is a failure in the returned report.
    """
    import_gx_in_background()
    with open_table(train_uri) as train:
        if test_uri is None:
            return _validate_sources(train, None, contract, docs_dir, settings)
        with open_table(test_uri) as test:
            return _validate_sources(train, test, contract, docs_dir, settings)


def validate_frames(
    train: pd.DataFrame,
    test: pd.DataFrame | None,
    contract: DataContract,
    docs_dir: Path | None = None,
    settings: ValidationSettings | None = None,
) -> ValidationReport:
    """Validate in-memory splits against `contract` (same checks as `validate_dataset`)."""
    import_gx_in_background()
    return _validate_sources(
        TableSource.from_frame(train, "train"),
        None if test is None else TableSource.from_frame(test, "test"),
        contract,
        docs_dir,
        settings,
    )


def _validate_sources(
    train: TableSource,
    test: TableSource | None,
    contract: DataContract,
    docs_dir: Path | None,
    settings: ValidationSettings | None,
) -> ValidationReport:
    settings = settings or ValidationSettings()
    label = contract.label_column
    features = contract.feature_columns(train.columns)
    sources = {"train": train} | ({"test": test} if test is not None else {})
    scans = {
        split: scan_source(source, split, label, features, contract, settings)
        for split, source in sources.items()
    }
    frames = {split: gx_frame(scans[split], sources[split], contract) for split in scans}
    findings, data_docs, gx_version = run_gx(scans, frames, contract, docs_dir, settings)
    for split, scan in scans.items():
        findings += scan_findings(scan, contract, is_train=split == "train")
    if "test" in scans:
        findings += cross_split_findings(scans["train"], scans["test"], contract, settings)
    statistics = {
        split: scan.statistics() | {"gx_rows": len(frames[split])} for split, scan in scans.items()
    }
    if contract.is_text:
        findings += _text_checks(scans, contract, settings, statistics)
    failures = [f for f in findings if f.severity == "failure"]
    warnings = [f for f in findings if f.severity == "warning"]
    digest = hashlib.sha256("".join(s.content_hash for s in scans.values()).encode())
    report = ValidationReport(
        passed=not failures,
        failures=failures,
        warnings=warnings,
        rows={split: scan.rows for split, scan in scans.items()},
        statistics=statistics,
        data_docs=data_docs,
        dataset_hash=digest.hexdigest(),
        method=(
            "an exact streaming scan of every row (counts, ranges, classes, duplicates, leakage), "
            f"and GX Core {gx_version} on "
            + ", ".join(f"{len(frames[s]):,} {s} rows" for s in scans)
            + f" (a seeded sample of at most {settings.sample_rows:,} rows per split plus every "
            "row the scan flagged)"
        ),
    )
    log.info(report.summary_line())
    return report


def _text_checks(
    scans: dict[str, SplitScan],
    contract: DataContract,
    settings: ValidationSettings,
    statistics: dict[str, dict[str, Any]],
) -> list[Finding]:
    """The text columns' checks; each split's `text` statistics go into `statistics`."""
    findings: list[Finding] = []
    for split, scan in scans.items():
        found, statistics[split]["text"] = text_split_findings(scan, contract, settings)
        findings += found
    if "test" in scans:
        found, leaked = text_leakage_findings(scans["train"], scans["test"], contract, settings)
        statistics["test"]["text"] |= leaked
        findings += found
    return findings


def write_validated(
    source: str | pd.DataFrame,
    out: Path,
    contract: DataContract,
    batch_rows: int = BATCH_ROWS // 4,
) -> Path:
    """Stream the label and feature columns of a validated split into Parquet, normalised.

    Features become float32 (what training uses), in the contract's order (or the file's,
    when the contract lists none), and text columns strings; the label becomes int64
    (integers, booleans, integral floats) or string. Other columns are dropped. Memory: one
    batch of every column read (16 Ki rows by default, 6.5 MB at 100 float features) plus
    Parquet's buffers.
    """
    import pyarrow.parquet as pq

    if isinstance(source, pd.DataFrame):
        reader = TableSource.from_frame(source, "split")
    else:
        reader = open_table(source)
    with reader:
        label = contract.label_column
        features = contract.feature_columns(reader.columns)
        feature_type = pa.string() if contract.is_text else pa.float32()
        missing = [c for c in [label, *features] if c not in reader.columns]
        if missing:
            raise DataValidationError(
                f"{reader.name}: cannot write the validated split: "
                f"missing columns {listing(missing)}"
            )
        label_type = _label_arrow_type(reader.schema.field(label).type)
        schema = pa.schema([(label, label_type)] + [(f, feature_type) for f in features])
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            with pq.ParquetWriter(out, schema) as writer:
                for batch in reader.iter_batches([label, *features], batch_rows):
                    columns = [_normalise_label(batch.column(0), label_type)]
                    columns += [c.cast(feature_type, safe=False) for c in batch.columns[1:]]
                    writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
        except pa.ArrowInvalid as exc:  # text in a feature, a fractional label: not validated
            raise DataValidationError(
                f"{reader.name}: cannot normalise the split (did it pass validation?): {exc}"
            ) from exc
    return out


def _label_arrow_type(arrow_type: pa.DataType) -> pa.DataType:
    """int64 for integer, boolean and float labels; string for the rest."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    numeric = is_number_type(arrow_type) or pa.types.is_boolean(arrow_type)
    return pa.int64() if numeric else pa.string()


def _normalise_label(array: pa.Array, label_type: pa.DataType) -> pa.Array:
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array.cast(label_type)
