"""evaluate: every model measured on the test split, the ONNX export, and the gates."""

from __future__ import annotations

import json
from pathlib import Path

from kfp import dsl

from components import evaluate

run_evaluate = evaluate.make("kdflow:test").python_func


def test_every_model_is_measured_and_the_lenient_gates_pass(evaluated):
    summary = json.loads(evaluated["summary"])
    assert evaluated["passed"] is True and summary["passed"] is True
    assert [t["spec"] for t in summary["teachers"]] == ["mlp:hidden=128",
                                                        "cnn:channels=8-16,hidden=32"]
    assert summary["dataset"]["rows"] == 1797
    metrics = evaluated["metrics"].metadata
    assert 0 < metrics["student_accuracy"] <= 1 and metrics["student_params"] > 0
    confusion = evaluated["confusion"].metadata["confusionMatrix"]
    assert len(confusion["annotationSpecs"]) == 10
    assert (Path(evaluated["onnx_model"].path) / "model.onnx").exists()
    assert evaluated["onnx_model"].metadata == {"format": "onnx", "file": "model.onnx"}
    assert "retention" in Path(evaluated["report"].path).read_text()
    assert "<" in Path(evaluated["plots"].path).read_text()


def test_a_strict_gate_fails_the_run_and_names_itself(evaluated, artifact):
    strict = {**json.loads(evaluated["configs"]["gate_config"]), "min_compression": 1000.0}
    out = {name: artifact(kind, name) for name, kind in (
        ("metrics", dsl.Metrics), ("confusion", dsl.ClassificationMetrics),
        ("report", dsl.Markdown), ("onnx_model", dsl.Model), ("plots", dsl.HTML))}
    passed, summary = run_evaluate(
        dataset=dsl.Dataset(uri=str(evaluated["dataset"])), teachers=evaluated["teachers"],
        student_model=evaluated["student"], baseline_model=evaluated["baseline"],
        dataset_info=json.dumps(json.loads(evaluated["summary"])["dataset"]),
        gate_config=json.dumps(strict), registry_config=evaluated["configs"]["registry_config"],
        **out)
    gates = json.loads(summary)["gates"]
    assert passed is False
    assert gates["compression"]["passed"] is False and gates["compression"]["threshold"] == 1000
    assert all(g["passed"] for name, g in gates.items() if name != "compression")
