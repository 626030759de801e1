"""register: the student into the MLflow model registry, with its lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kfp import dsl

from components import register
from kdflow.errors import KdflowError

run_register = register.make("kdflow:test").python_func


def call(evaluated, artifact, summary: str) -> tuple[str, dict]:
    out = {"report": artifact(dsl.Markdown, "report"), "metrics": artifact(dsl.Metrics, "metrics")}
    result = run_register(
        student_model=evaluated["student"], onnx_model=evaluated["onnx_model"], summary=summary,
        registry_config=evaluated["configs"]["registry_config"],
        distill_config=evaluated["configs"]["distill_config"], run_id="pipeline-run-1", **out)
    return result, out


def test_the_student_is_registered_as_champion_with_its_kd_settings(evaluated, artifact):
    from mlflow import MlflowClient

    result, out = call(evaluated, artifact, evaluated["summary"])
    registered = json.loads(result)["registered"]
    assert (registered["name"], registered["aliases"]) == ("digits", ["challenger", "champion"])
    assert out["metrics"].metadata == {"version": registered["version"],
                                       "promoted_to_champion": 1.0}
    page = Path(out["report"].path).read_text()
    assert page.startswith(f"# Registered digits version {registered['version']}")
    client = MlflowClient(evaluated["tracking_uri"], evaluated["tracking_uri"])
    version = client.get_model_version("digits", str(registered["version"]))
    assert version.tags["kdflow.run_id"] == "pipeline-run-1"
    assert json.loads(version.tags["kdflow.kd"]) == json.loads(
        evaluated["configs"]["distill_config"])


def test_a_summary_whose_gates_failed_is_refused(evaluated, artifact):
    failed = {**json.loads(evaluated["summary"]), "passed": False}
    with pytest.raises(KdflowError, match="refusing to register: a gate did not pass"):
        call(evaluated, artifact, json.dumps(failed))
