"""skip_registration: the else branch names the failed gates and registers nothing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from kfp import dsl

from components import skip_registration

skip = skip_registration.make("kdflow:test").python_func


def test_the_failed_gates_are_named_on_the_page_in_the_log_and_as_a_metric(
        evaluated, artifact, caplog):
    summary = json.loads(evaluated["summary"])
    summary["passed"] = False
    for name in ("compression", "speedup"):
        summary["gates"][name]["passed"] = False
    report, metrics = artifact(dsl.Markdown, "report"), artifact(dsl.Metrics, "metrics")
    with caplog.at_level(logging.WARNING, logger="kdflow"):
        returned = skip(summary=json.dumps(summary), report=report, metrics=metrics)
    assert json.loads(returned) == summary  # the pipeline's output, as register's would be
    assert metrics.metadata == {"gates_failed": 2}
    named = "compression (failed), speedup (failed)"
    assert f"Gate(s) not passed: {named}." in Path(report.path).read_text()
    assert f"not registered: gate(s) not passed: {named}" in caplog.text
