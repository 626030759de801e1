"""GX Core on the per-image facts of each split: the suite (`facts_expectations`), its run in an
ephemeral context with Data Docs (`run_gx_on_facts`), and its outcome as findings where no
exact check of `kdflow.validation.image_checks` already explains a failed expectation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from kdflow.data.image_facts import FACT_COLUMNS, MAX_SIDE, ImageSet, usable_facts
from kdflow.validation.contract import DataContract
from kdflow.validation.findings import Finding
from kdflow.validation.gx_suite import gx_context
from kdflow.validation.scan import ValidationSettings

_CHECK = "kdflow_check"
"""The key, in an expectation's meta, of the exact check it mirrors."""

_ALSO_EXPLAINED_BY = {
    "single_class": ("no_images", "unreadable_images", "label_nulls"),
    "image_dimensions": ("unreadable_images",),
    "test_modes": ("unreadable_images",),
}
"""Exact checks that also explain a failed expectation: GX sees every fact row, the exact
checks (classes, sizes, modes) only the images that decode."""


def run_gx_on_facts(
    sets: dict[str, ImageSet],
    contract: DataContract,
    docs_dir: Path | None,
    settings: ValidationSettings,
) -> tuple[dict[str, list[Any]], Path | None, str]:
    """Run a GX Core suite on each split's facts table in an ephemeral context (as
    `gx_suite.run_gx` does for tables), building Data Docs into docs_dir if given.
    Returns each split's expectation results, the Data Docs index and GX's version."""
    gx, context, result_format = gx_context(docs_dir, settings)
    datasource = context.data_sources.add_pandas("kdflow_images")
    outcomes: dict[str, list[Any]] = {}
    for split, image_set in sets.items():
        name = f"kdflow_images_{split}"
        batch = datasource.add_dataframe_asset(split).add_batch_definition_whole_dataframe(split)
        suite = context.suites.add(
            gx.ExpectationSuite(name=name, expectations=facts_expectations(split, sets, contract))
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite)
        )
        result = definition.run(
            batch_parameters={"dataframe": image_set.facts}, result_format=result_format
        )
        outcomes[split] = list(result.results)
    if docs_dir is None:
        return outcomes, None, gx.__version__
    context.build_data_docs(site_names=["local_site"])
    return outcomes, Path(docs_dir) / "index.html", gx.__version__


def facts_expectations(split: str, sets: dict[str, ImageSet], contract: DataContract) -> list[Any]:
    """The GX suite of one split's facts; each expectation's meta names the exact check."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.metadata_types import FailureSeverity

    train = usable_facts(sets["train"])
    readable = 1.0 - contract.max_unreadable_fraction

    def meta(check: str) -> dict[str, str]:
        return {_CHECK: check}

    suite: list[Any] = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=FACT_COLUMNS, exact_match=True, meta=meta("facts_columns")
        ),
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=meta("no_images")),
        gxe.ExpectColumnValuesToBeInSet(
            column="decodes", value_set=[True], mostly=readable, meta=meta("unreadable_images")
        ),
        gxe.ExpectColumnValuesToNotBeNull(
            column="sha256", mostly=readable, meta=meta("unreadable_images")
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="label", meta=meta("label_nulls")),
    ]
    suite += [
        gxe.ExpectColumnValuesToBeBetween(
            column=side, min_value=1, max_value=MAX_SIDE, meta=meta("image_dimensions")
        )
        for side in ("width", "height")
    ]
    classes = _expected_classes(split, train, contract)
    if classes:
        check = "test_classes" if split == "test" else "unknown_classes"
        suite.append(
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=classes, meta=meta(check))
        )
    if split == "train":
        suite.append(
            gxe.ExpectColumnUniqueValueCountToBeBetween(
                column="label", min_value=2, meta=meta("single_class")
            )
        )
    modes = sorted(set(train["mode"].dropna()))
    if modes:
        suite.append(
            gxe.ExpectColumnValuesToBeInSet(
                column="mode",
                value_set=modes,
                severity=FailureSeverity.WARNING,
                meta=meta("test_modes"),
            )
        )
    return suite


def _expected_classes(split: str, train: pd.DataFrame, contract: DataContract) -> list[str]:
    """The classes a split's labels must be in: the contract's, or (test) train's."""
    if contract.classes is not None:
        return [str(c) for c in contract.classes]
    if split == "test":
        return sorted(set(train["label"].dropna()))
    return []


def gx_outcome_findings(outcomes: dict[str, list[Any]], findings: list[Finding]) -> list[Finding]:
    """Failed expectations as findings: each exact check they mirror takes the GX type; a
    failure no exact check explains (or an error in GX) becomes a finding of its own."""
    extra: list[Finding] = []
    for split, results in outcomes.items():
        for outcome in results:
            if outcome.success:
                continue
            config = outcome.expectation_config
            kind, column = config.type, config.kwargs.get("column")
            check = (config.meta or {}).get(_CHECK)
            same = [f for f in findings if f.split == split]
            for finding in (f for f in same if f.check == check):
                finding.expectation = finding.expectation or kind
            explains = {check, *_ALSO_EXPLAINED_BY.get(str(check), ())}
            explained = any(f.check in explains for f in same)
            if not explained or outcome.exception_info.get("raised_exception"):
                extra.append(_gx_only(outcome, split, kind, column))
    return extra


def _gx_only(outcome: Any, split: str, kind: str, column: str | None) -> Finding:
    """A failed expectation that no exact check reported: say what GX saw."""
    where = column or "the facts table"
    error = outcome.exception_info.get("exception_message")
    if outcome.exception_info.get("raised_exception"):
        return Finding(
            "gx_error",
            column,
            f"GX could not run {kind} on {where}: {error}",
            split=split,
            expectation=kind,
        )
    severity = (
        "warning" if str(outcome.expectation_config.severity.value) == "warning" else ("failure")
    )
    result = outcome.result or {}
    message = f"GX expectation {kind} failed on {where} of the per-image facts"
    if result.get("unexpected_count") is not None:
        message += f" ({result['unexpected_count']:,} unexpected values)"
    return Finding(
        "gx_facts",
        column,
        message,
        result.get("partial_unexpected_list"),
        split=split,
        expectation=kind,
        severity=severity,
    )


def _gx_statistics(results: list[Any]) -> dict[str, Any]:
    failed = [r.expectation_config.type for r in results if not r.success]
    return {"gx_expectations": len(results), "gx_failed": failed}
