"""distill: the student and the baseline from the teacher ensemble, in this process
(workers=0: Ray Train's local mode, no worker processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kfp import dsl

from components import distill
from kdflow.errors import ModelFormatError

run_distill = distill.make("kdflow:test").python_func
FAST = {"student": "mlp:hidden=8", "student_epochs": 2, "workers": 0}


def outputs(artifact) -> dict:
    return {"student_model": artifact(dsl.Model, "student_model"),
            "baseline_model": artifact(dsl.Model, "baseline_model"),
            "seed_models": artifact(dsl.Model, "seed_models"),
            "metrics": artifact(dsl.Metrics, "metrics"), "curves": artifact(dsl.HTML, "curves")}


def test_student_and_baseline_are_saved_with_their_curves_and_metrics(
        artifact, configs, digits_dataset, teacher_models, ray_tmp):
    out = outputs(artifact)
    run_distill(dataset=dsl.Dataset(uri=str(digits_dataset)), teachers=teacher_models,
                distill_config=configs(**FAST)["distill_config"], seed=0,
                run_name="component-test", tracking_uri="", **out)
    for role in ("student_model", "baseline_model"):
        assert (Path(out[role].path) / "model.safetensors").exists()
        meta = out[role].metadata
        assert meta["spec"] == "mlp:hidden=8" and meta["params"] > 0
        assert [e["epoch"] for e in meta["history"]] == [1, 2]
    assert out["student_model"].metadata["params"] == out["baseline_model"].metadata["params"]
    metrics = out["metrics"].metadata
    assert {"student_val_accuracy", "baseline_val_accuracy", "ensemble_val_accuracy",
            "teacher0_weight", "teacher1_weight", "teacher_cache_hits"} <= set(metrics)
    assert metrics["teacher0_weight"] + metrics["teacher1_weight"] == pytest.approx(1.0)
    assert "<" in Path(out["curves"].path).read_text()


def test_a_folder_that_is_not_a_model_is_refused(artifact, configs, digits_dataset, tmp_path):
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ModelFormatError, match="no spec.json; a kdflow model is a folder"):
        run_distill(dataset=dsl.Dataset(uri=str(digits_dataset)),
                    teachers=[dsl.Model(uri=str(tmp_path / "not-a-model"))],
                    distill_config=configs(**FAST)["distill_config"], seed=0,
                    run_name="component-test", tracking_uri="", **outputs(artifact))


def test_seeds_distil_once_each_and_the_best_on_validation_is_the_student(
        artifact, configs, digits_dataset, teacher_models, ray_tmp):
    out = outputs(artifact)
    run_distill(dataset=dsl.Dataset(uri=str(digits_dataset)), teachers=teacher_models,
                distill_config=configs(**FAST, seeds=[3, 1])["distill_config"], seed=0,
                run_name="component-seeds", tracking_uri="", **out)
    record = out["student_model"].metadata["seeds"]
    assert [r["seed"] for r in record["runs"]] == [3, 1]
    best = max(record["runs"], key=lambda r: r["val_accuracy"])
    assert record["chosen"] == best["seed"] and best["folder"] is None
    (other,) = [r for r in record["runs"] if r["seed"] != record["chosen"]]
    seeds = Path(out["seed_models"].path)
    for role in ("student", "baseline"):  # the seed not chosen keeps its own pair
        assert (seeds / other["folder"] / role / "model.safetensors").exists()
    assert (Path(out["student_model"].path) / "model.safetensors").exists()
    assert len(out["student_model"].metadata["cost"]) == 2  # one ledger record per seed
    assert json.loads((seeds / "seeds.json").read_text())["chosen"] == record["chosen"]
