"""The contract as a GX Core 1.x expectation suite per split, run on a sample, with Data Docs.

GX validates a seeded uniform sample of each split plus every row the scan flagged
(`gx_frame`), so every row-level failure anywhere in the file fails its expectation, with
example rows, in the GX result and the Data Docs. great_expectations is imported inside
the functions only: it takes seconds, and only validation needs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdflow.data.tables import TableSource
from kdflow.validation.contract import DataContract
from kdflow.validation.findings import Finding
from kdflow.validation.gx_findings import gx_finding
from kdflow.validation.scan import SplitScan, ValidationSettings
from kdflow.validation.text_checks import has_no_text

log = logging.getLogger(__name__)

_FLOAT_MAX = float(np.finfo(np.float32).max)
"""Features train as float32: a value beyond its range would train as infinity."""
_INT_TYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
_FLOAT_TYPES = ["float16", "float32", "float64", *_INT_TYPES]


def import_gx_in_background() -> None:
    """Start importing GX Core (≈3-5 s, its fixed cost) while the scan reads the data.

    The scan spends most of its time in pyarrow, which releases the GIL, so on two or more
    cores the import is nearly free; `run_gx`'s own import then waits for this one (Python's
    import lock) instead of starting over. A failure here is left to `run_gx` to report.
    """
    if "great_expectations.expectations" in sys.modules:
        return

    def load() -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        with contextlib.suppress(Exception):
            import great_expectations.expectations  # noqa: F401

    threading.Thread(target=load, name="kdflow-gx-import", daemon=True).start()


def gx_frame(scan: SplitScan, source: TableSource, contract: DataContract) -> pd.DataFrame:
    """The sample, plus the flagged rows it lacks, so GX sees every row-level failure."""
    missing = sorted(_flagged_rows(scan, contract) - set(scan.sample.index))
    frame = scan.sample
    if missing:
        log.info("%s: adding %d flagged rows to the GX sample", scan.name, len(missing))
        frame = pd.concat([frame, source.take(missing)]).sort_index()
    for name in scan.numeric:  # all-null, decimal and boolean columns: GX wants numbers
        if frame[name].dtype == object or pd.api.types.is_bool_dtype(frame[name]):
            frame[name] = frame[name].astype("float64")
    return frame


def _flagged_rows(scan: SplitScan, contract: DataContract) -> set[int]:
    """Rows GX must see, beyond the sample, for its verdicts to hold for the whole split.

    Offending rows of every zero-tolerance check, the first row of each class the sample
    lacks, and two differing rows of a feature that is constant only in the sample. Clean
    data flags nothing, so its GX frame is the sample alone.
    """
    rows: set[int] = set()
    for name, stats in scan.numeric.items():
        for check, found in stats.rows.items():
            if check != "null" or contract.null_fraction_allowed(name) == 0:
                rows.update(found)
        if stats.other_row is not None and scan.sample[name].nunique() < 2:
            rows.update((stats.first_row or 0, stats.other_row))
    for text in scan.text.values():
        rows.update(text.rows)
    for column in scan.text_columns.values():
        rows.update(column.null_rows + column.empty_rows + column.blank_rows)
    if scan.label is not None and scan.label.holds_classes:
        sampled = set(scan.sample[scan.label_column].dropna())
        rows.update(r for c, r in scan.label.first_rows.items() if c not in sampled)
        rows.update(scan.label.null_rows)
    return rows


def run_gx(
    scans: dict[str, SplitScan],
    frames: dict[str, pd.DataFrame],
    contract: DataContract,
    docs_dir: Path | None,
    settings: ValidationSettings,
) -> tuple[list[Finding], Path | None, str]:
    """Run each split's expectation suite in GX; build Data Docs into docs_dir if given.

    Without Data Docs the results only carry pass/fail (BOOLEAN_ONLY): GX spends ~12 ms per
    expectation, 40% less than with SUMMARY, and the findings take counts and example rows
    from the scan anyway.
    """
    gx, context, result_format = gx_context(docs_dir, settings)
    datasource = context.data_sources.add_pandas("kdflow")
    findings: list[Finding] = []
    for split, scan in scans.items():
        batch = datasource.add_dataframe_asset(split).add_batch_definition_whole_dataframe(split)
        expectations = _expectations(scan, contract, is_train=split == "train")
        suite = context.suites.add(
            gx.ExpectationSuite(name=f"kdflow_{split}", expectations=expectations)
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"kdflow_{split}", data=batch, suite=suite)
        )
        # run() also stores the result, which is what build_data_docs renders.
        result = definition.run(
            batch_parameters={"dataframe": frames[split]}, result_format=result_format
        )
        for outcome in result.results:
            if not outcome.success:
                finding = gx_finding(outcome, scan, frames[split], contract)
                if finding is not None:
                    findings.append(finding)
    if docs_dir is None:
        return findings, None, gx.__version__
    context.build_data_docs(site_names=["local_site"])
    return findings, Path(docs_dir) / "index.html", gx.__version__


def gx_context(
    docs_dir: Path | None, settings: ValidationSettings
) -> tuple[Any, Any, dict[str, Any]]:
    """GX, an ephemeral context without progress bars (its Data Docs built into `docs_dir`
    when given), and the result format: SUMMARY with example rows for Data Docs, else
    BOOLEAN_ONLY (GX spends ~12 ms per expectation, 40% less than with SUMMARY)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx  # ≈5 s to import: only when validating
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        point_data_docs(context, Path(docs_dir))
    result_format = (
        {"result_format": "SUMMARY", "partial_unexpected_count": settings.example_rows}
        if docs_dir is not None
        else {"result_format": "BOOLEAN_ONLY"}
    )
    return gx, context, result_format


def point_data_docs(context: Any, docs_dir: Path) -> None:
    """Make the ephemeral context's `local_site` write into docs_dir."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    site = dict(context.list_data_docs_sites()["local_site"])
    site["store_backend"] = {
        "class_name": "TupleFilesystemStoreBackend",
        "base_directory": str(docs_dir.resolve()),
    }
    site["show_how_to_buttons"] = False
    context.update_data_docs_site("local_site", site)


def _expectations(scan: SplitScan, contract: DataContract, is_train: bool) -> list[Any]:
    """The contract as GX expectations for one split (only for columns the split has)."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.metadata_types import FailureSeverity

    label = contract.label_column
    present = [f for f in scan.features if f not in scan.missing]
    warn = FailureSeverity.WARNING
    constant = warn if contract.on_constant_feature == "warn" else FailureSeverity.CRITICAL
    suite: list[Any] = [
        gxe.ExpectColumnToExist(column=label),
        gxe.ExpectTableColumnsToMatchSet(column_set=scan.features, exact_match=False),
        gxe.ExpectTableColumnsToMatchSet(
            column_set=[label, *scan.features], exact_match=True, severity=warn
        ),
    ]
    if scan.label is not None and scan.label.holds_classes:
        suite.append(gxe.ExpectColumnValuesToNotBeNull(column=label))
        if contract.classes is not None:
            suite.append(gxe.ExpectColumnValuesToBeInSet(column=label, value_set=contract.classes))
        if is_train:
            suite.append(gxe.ExpectColumnUniqueValueCountToBeBetween(column=label, min_value=2))
    if contract.is_text:
        return suite + _text_expectations(scan, contract)
    for name in present:
        spec = contract.feature_spec(name)
        types = _INT_TYPES if spec.dtype == "int" else _FLOAT_TYPES
        suite.append(gxe.ExpectColumnValuesToBeInTypeList(column=name, type_list=types))
        if name in scan.text:
            continue
        if contract.null_fraction_allowed(name) == 0:
            suite.append(gxe.ExpectColumnValuesToNotBeNull(column=name))
        suite.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=name,
                min_value=-_FLOAT_MAX if spec.min is None else spec.min,
                max_value=_FLOAT_MAX if spec.max is None else spec.max,
            )
        )
        suite.append(
            gxe.ExpectColumnUniqueValueCountToBeBetween(column=name, min_value=2, severity=constant)
        )
    return suite


def _text_expectations(scan: SplitScan, contract: DataContract) -> list[Any]:
    """Each text column exists, is never null and never empty (a column of text only)."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.metadata_types import FailureSeverity

    suite: list[Any] = []
    for name in contract.text_columns or []:
        suite.append(gxe.ExpectColumnToExist(column=name))
        stats = scan.text_columns.get(name)
        if stats is None or not stats.holds_text:  # missing, or not text: no value checks
            continue
        suite.append(gxe.ExpectColumnValuesToNotBeNull(column=name))
        # Some empty texts warn; a column with no text at all fails.
        severity = FailureSeverity.CRITICAL if has_no_text(stats) else FailureSeverity.WARNING
        suite.append(
            gxe.ExpectColumnValueLengthsToBeBetween(column=name, min_value=1, severity=severity)
        )
    return suite
