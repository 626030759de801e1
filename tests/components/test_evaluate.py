"""evaluate: every model measured on the test split, the ONNX export, and the gates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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
        seed_models=artifact(dsl.Model, "seed_models"),
        dataset_info=json.dumps(json.loads(evaluated["summary"])["dataset"]),
        gate_config=json.dumps(strict), registry_config=evaluated["configs"]["registry_config"],
        **out)
    gates = json.loads(summary)["gates"]
    assert passed is False
    assert gates["compression"]["passed"] is False and gates["compression"]["threshold"] == 1000
    assert all(g["passed"] for name, g in gates.items() if name != "compression")


def test_seeds_decide_beats_baseline_together_and_the_chosen_seed_is_judged(
        evaluated, artifact, tmp_path):
    """Two seeds' students and baselines (the second seed's in seed_models, as distill
    leaves them): beats_baseline decides on both, every seed is recorded."""
    from kdflow.config import TeacherConfig
    from kdflow.steps import train_teacher

    seeds = tmp_path / "seed_models"
    for k, role in enumerate(("student", "baseline")):
        train_teacher(evaluated["dataset"], "mlp:hidden=8", TeacherConfig(teacher_epochs=1),
                      10 + k, seeds / "seed1" / role)
    record = {"chosen": 0, "runs": [{"seed": 0, "val_accuracy": 0.9, "folder": None},
                                    {"seed": 1, "val_accuracy": 0.8, "folder": "seed1"}]}
    student = dsl.Model(uri=evaluated["student"].uri,
                        metadata={**evaluated["student"].metadata, "seeds": record})
    out = {name: artifact(kind, name) for name, kind in (
        ("metrics", dsl.Metrics), ("confusion", dsl.ClassificationMetrics),
        ("report", dsl.Markdown), ("onnx_model", dsl.Model), ("plots", dsl.HTML))}
    _, text = run_evaluate(
        dataset=dsl.Dataset(uri=str(evaluated["dataset"])), teachers=evaluated["teachers"],
        student_model=student, baseline_model=evaluated["baseline"],
        seed_models=dsl.Model(uri=str(seeds)),
        dataset_info=json.dumps(json.loads(evaluated["summary"])["dataset"]),
        gate_config=json.dumps({**json.loads(evaluated["configs"]["gate_config"]),
                                "latency_batch": 16}),
        registry_config=evaluated["configs"]["registry_config"], **out)
    summary, one_seed = json.loads(text), json.loads(evaluated["summary"])
    found = summary["seeds"]
    assert found["seeds"] == [0, 1] and found["chosen"] == 0
    assert [r["chosen"] for r in found["runs"]] == [True, False]
    # The chosen seed is the one-seed run's student: its figures and other gates stand.
    assert summary["student"]["accuracy"] == one_seed["student"]["accuracy"]
    assert found["runs"][0]["student"] == pytest.approx(one_seed["student"]["accuracy"])
    assert "over 2 seeds" in summary["gates"]["beats_baseline"]["detail"]
    rows = sum(map(sum, one_seed["student"]["confusion_matrix"]))
    assert summary["gates"]["beats_baseline"]["evidence"]["n"] == rows  # rows, not rows × seeds
    assert {"seed0_student", "seed1_student", "seed1_gain"} <= set(out["metrics"].metadata)
    report = Path(out["report"].path).read_text()
    assert "## Seeds" in report
    # --latency-batch: the throughput timing and the ledger's per-row saving at batch 16.
    assert summary["latency_batch"] == 16 and "batch 1 and batch 16" in report
    assert "PyTorch, per row at batch 16" in report
