"""GX Core on a causal-lm corpus (`kdflow.validation.corpus`): each file's corpus columns
exist, are never null, and hold at least one character (the text or completion) and at
most the longest value kept whole.

GX runs on a seeded sample of each file plus every row the exact checks flagged, so it
fails wherever they do and its Data Docs show those rows. The exact checks see every row
and make the findings; a failed expectation names the finding it confirms (its
`expectation`), and one that no exact finding explains becomes a finding of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdflow.validation.findings import Finding
from kdflow.validation.gx_suite import gx_context
from kdflow.validation.scan import ValidationSettings

_CHECK = "kdflow_check"
"""The key, in an expectation's meta, of the exact check it mirrors."""


def run_corpus_gx(
    frames: dict[str, pd.DataFrame],
    flagged: dict[str, list[int]],
    exact: list[Finding],
    columns: list[str],
    max_chars: int,
    docs_dir: Path | None,
    settings: ValidationSettings,
) -> tuple[list[Finding], Path | None, str, dict[str, int]]:
    """Each file's suite (`frames`: its corpus columns, by role) in an ephemeral GX
    context, Data Docs into `docs_dir` when given. Returns the findings GX adds (the
    `exact` findings it confirms take its expectation type), the Data Docs index, GX's
    version and the rows GX saw of each file."""
    gx, context, result_format = gx_context(docs_dir, settings)
    datasource = context.data_sources.add_pandas("kdflow_corpus")
    findings: list[Finding] = []
    seen: dict[str, int] = {}
    for role, frame in frames.items():
        sample = _gx_frame(frame, flagged.get(role, []), settings)
        seen[role] = len(sample)
        name = f"kdflow_corpus_{role}"
        batch = datasource.add_dataframe_asset(role).add_batch_definition_whole_dataframe(role)
        suite = context.suites.add(
            gx.ExpectationSuite(name=name, expectations=corpus_expectations(columns, max_chars))
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite)
        )
        result = definition.run(batch_parameters={"dataframe": sample},
                                result_format=result_format)
        findings += _gx_findings(result.results, role, [f for f in exact if f.split == role])
    if docs_dir is None:
        return findings, None, gx.__version__, seen
    context.build_data_docs(site_names=["local_site"])
    return findings, Path(docs_dir) / "index.html", gx.__version__, seen


def _gx_frame(frame: pd.DataFrame, flagged: list[int], settings: ValidationSettings
              ) -> pd.DataFrame:
    """A seeded sample of the file plus the rows the exact checks `flagged`, so GX fails
    where they do."""
    if len(frame) <= settings.sample_rows:
        return frame
    rng = np.random.default_rng(settings.seed)
    rows = set(rng.choice(len(frame), settings.sample_rows, replace=False).tolist())
    rows |= set(flagged)
    return frame.iloc[sorted(rows)]


def corpus_expectations(columns: list[str], max_chars: int) -> list[Any]:
    """The GX suite of a corpus file; each expectation's meta names the exact check."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.metadata_types import FailureSeverity

    warn = FailureSeverity.WARNING
    suite: list[Any] = [gxe.ExpectTableRowCountToBeBetween(min_value=1,
                                                           meta={_CHECK: "corpus_documents"})]
    for column in columns:
        suite += [
            gxe.ExpectColumnToExist(column=column, meta={_CHECK: "corpus_column"}),
            gxe.ExpectColumnValuesToNotBeNull(column=column, severity=warn,
                                              meta={_CHECK: "corpus_dropped"}),
            gxe.ExpectColumnValueLengthsToBeBetween(
                column=column, max_value=max_chars, severity=warn,
                meta={_CHECK: "corpus_truncated"},
            ),
        ]
    suite.append(gxe.ExpectColumnValueLengthsToBeBetween(
        column=columns[-1], min_value=1, severity=warn, meta={_CHECK: "corpus_dropped"}
    ))
    return suite


def _gx_findings(results: list[Any], role: str, exact: list[Finding]) -> list[Finding]:
    """Failed expectations as findings: the exact finding each mirrors takes its GX type;
    a failure no exact finding explains (or an error in GX) becomes a finding of its own."""
    extra: list[Finding] = []
    for outcome in results:
        if outcome.success:
            continue
        config = outcome.expectation_config
        kind, column = config.type, config.kwargs.get("column")
        check = (config.meta or {}).get(_CHECK)
        error = outcome.exception_info.get("raised_exception")
        mirrored = [f for f in exact if f.check == check]
        for finding in mirrored:
            finding.expectation = finding.expectation or kind
        if mirrored and not error:
            continue
        where = column or "the table"
        message = (
            f"GX could not run {kind} on {where}: "
            f"{outcome.exception_info.get('exception_message')}"
            if error else f"GX expectation {kind} failed on {where}"
        )
        severity = "warning" if str(config.severity.value) == "warning" else "failure"
        extra.append(Finding("gx_error" if error else "gx_corpus", column, message,
                             split=role, expectation=kind, severity=severity))
    return extra
