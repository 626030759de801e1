"""Each distillation method end to end through the distill step, in a real local Ray:
feature hints across families with per-teacher KL (replicated and sharded: DDP and FSDP
workers), attention maps between transformers,
born-again generations, and a bad layer name refused before Ray Train starts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from kdflow.config import DistillConfig, TeacherConfig
from kdflow.errors import ConfigError
from kdflow.models.artifacts import load_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run(dataset: Path, teachers: list[Path], cfg: DistillConfig, root: Path, name: str) -> dict:
    from kdflow.distill.run import distill

    return distill(
        dataset, teachers, cfg, root / "student", root / "baseline", root / "work", name, seed=0
    )


HINTS = DistillConfig(
    student="mlp:hidden=16",
    student_epochs=2,
    max_failures=1,
    teacher_mode="online",
    feature_weight=0.5,
    feature_layers=["net.6=net.1"],  # CNN block 2 ReLU (16 × 4 × 4) → MLP hidden
    hint_teacher=1,
    ensemble="weighted_probs",
    teacher_weights=[1.0, 3.0],
    multi_teacher="separate",
)


@pytest.fixture(scope="module")
def hinted_run(digits_dataset, small_teachers, tmp_path_factory, ray_tmp):
    root = tmp_path_factory.mktemp("hints")
    return root, run(digits_dataset, small_teachers, HINTS, root, "hints")


def test_cnn_teacher_hints_an_mlp_student_and_the_projection_stays_out_of_the_export(
    hinted_run,
):
    root, result = hinted_run
    assert [t["weight"] for t in result["teachers"]] == [0.25, 0.75]
    history = result["student"]["history"]
    assert all(math.isfinite(h["feature_loss"]) and h["feature_loss"] > 0 for h in history)
    assert history[-1]["feature_loss"] < history[0]["feature_loss"]
    assert all("feature_loss" not in h for h in result["baseline"]["history"])
    # The exported student is the plain MLP: no projection weights, loads strictly.
    weights = load_file(str(root / "student" / "model.safetensors"))
    assert not [k for k in weights if "projection" in k]
    _, spec = load_model(root / "student")
    assert spec["model"] == {"arch": "mlp", "hidden": 16}
    assert result["student"]["val_accuracy"] > 0.5


def test_killed_worker_resumes_hints_with_their_projections(
    hinted_run, digits_dataset, small_teachers, tmp_path
):
    """The projections and their optimizer state are in the checkpoint: a worker killed
    after epoch 1 ends where the undisturbed run ends."""
    from kdflow.distill.run import distill

    root, undisturbed = hinted_run
    resumed = distill(
        digits_dataset, small_teachers, HINTS, tmp_path / "student", tmp_path / "baseline",
        root / "work", "hints-killed", seed=0, fail_at_epoch=1,
    )
    assert [h["epoch"] for h in resumed["student"]["history"]] == [1, 2]
    a = load_file(str(root / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "student" / "model.safetensors"))
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-5)
    assert resumed["student"]["history"][-1]["feature_loss"] == pytest.approx(
        undisturbed["student"]["history"][-1]["feature_loss"], rel=1e-4
    )


@pytest.mark.e2e  # two two-worker runs; test_distill_ray covers FSDP in `make test`
def test_hints_train_the_same_student_sharded_as_replicated(
    digits_dataset, small_teachers, tmp_path
):
    """`--parallel fsdp` with hints: the HintedStudent (student and projections) is one
    FSDP unit, its state split back into the two for the checkpoint; two workers end where
    two DDP workers end, projections and feature losses included."""
    from dataclasses import replace

    results = {}
    for parallel in ("ddp", "fsdp"):
        cfg = replace(HINTS, workers=2, parallel=parallel)
        results[parallel] = run(digits_dataset, small_teachers, cfg, tmp_path / parallel,
                                f"hints-{parallel}")
    ddp, fsdp = (results[p]["student"]["history"] for p in ("ddp", "fsdp"))
    assert fsdp[0]["worker_params"] < ddp[0]["worker_params"]
    assert [h["feature_loss"] for h in fsdp] == pytest.approx(
        [h["feature_loss"] for h in ddp], rel=1e-4)
    a = load_file(str(tmp_path / "ddp" / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "fsdp" / "student" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def transformer_teacher(digits_dataset, tmp_path_factory) -> Path:
    from kdflow.steps import train_teacher

    folder = tmp_path_factory.mktemp("transformer") / "teacher"
    train_teacher(
        digits_dataset,
        "transformer:dim=32,heads=4,depth=2,patch=4",
        TeacherConfig(teacher_epochs=5),
        0,
        folder,
    )
    return folder


def test_transformer_student_learns_the_teachers_attention_maps(
    digits_dataset, transformer_teacher, tmp_path, ray_tmp
):
    cfg = DistillConfig(
        student="transformer:dim=8,heads=2,depth=1,patch=4",
        student_epochs=3,
        teacher_mode="online",
        attention_weight=1.0,
    )
    result = run(digits_dataset, [transformer_teacher], cfg, tmp_path, "attention")
    losses = [h["attention_loss"] for h in result["student"]["history"]]
    assert all(math.isfinite(v) and v >= 0 for v in losses)
    assert losses[-1] < losses[0]
    model, _ = load_model(tmp_path / "student")
    assert model.spec.arch == "transformer"


def test_born_again_generation_two_learns_from_generation_one(
    digits_dataset, small_teachers, tmp_path, ray_tmp
):
    cfg = DistillConfig(student="mlp:hidden=16", student_epochs=2, generations=2)
    result = run(digits_dataset, small_teachers, cfg, tmp_path, "born-again")
    generations = result["generations"]
    assert [g["generation"] for g in generations] == [1, 2]
    assert [g["teacher"] for g in generations] == ["ensemble", "generation 1"]
    assert result["student"]["val_accuracy"] == generations[-1]["val_accuracy"]
    gen1 = tmp_path / "work" / "born-again" / "born-again" / "gen-1"
    assert json.loads((gen1 / "spec.json").read_text())["model"] == {"arch": "mlp", "hidden": 16}
    # Generation 2 is a different network (its own seed, its own teacher), saved as the student.
    assert load_file(str(gen1 / "model.safetensors"))["net.1.weight"].tolist() != load_file(
        str(tmp_path / "student" / "model.safetensors")
    )["net.1.weight"].tolist()
    assert result["baseline"]["epochs"] == 2


def test_a_feature_layer_missing_from_the_teacher_fails_before_training(
    digits_dataset, small_teachers, tmp_path, ray_tmp
):
    cfg = DistillConfig(
        student_epochs=1, teacher_mode="online", feature_weight=1.0, feature_layers=["conv9=net.1"]
    )
    with pytest.raises(ConfigError) as err:
        run(digits_dataset, small_teachers, cfg, tmp_path, "bad-layer")
    assert str(err.value).startswith("--feature-layers: no layer 'conv9' in the teacher (mlp:")
    assert not (tmp_path / "work" / "ray").exists()
