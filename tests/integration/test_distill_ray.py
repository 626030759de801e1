"""Distillation in a real local Ray cluster with Ray Train."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kdflow.artifacts import load_model
from kdflow.config import DistillConfig
from kdflow.data import read_split
from kdflow.evaluation import accuracy_of_logits, logits_on

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def soft_path(digits_dataset: Path, small_teachers: list[Path], tmp_path_factory) -> Path:
    import torch

    from kdflow.distill import teacher_logits
    from kdflow.losses import soft_targets

    work = tmp_path_factory.mktemp("work")
    logits = teacher_logits(digits_dataset, small_teachers, work / "cache")
    path = work / "soft.npy"
    np.save(path, soft_targets([torch.from_numpy(z) for z in logits], 4.0).numpy())
    return path


def _test_accuracy(folder: Path, dataset: Path) -> float:
    model, _ = load_model(folder)
    test = read_split(dataset, "test")
    return accuracy_of_logits(logits_on(model, test), test.y)


def test_distill_writes_student_and_baseline_trained_side_by_side(
    digits_dataset, small_teachers, tmp_path, ray_tmp
):
    from kdflow.distill import distill

    cfg = DistillConfig(student_epochs=3)
    result = distill(
        digits_dataset,
        small_teachers,
        cfg,
        tmp_path / "student",
        tmp_path / "baseline",
        tmp_path / "work",
        "side-by-side",
        seed=0,
    )
    assert set(result) == {"student", "baseline"}
    for role in ("student", "baseline"):
        assert result[role]["epochs"] == 3
        assert len(result[role]["history"]) == 3
        spec = json.loads((tmp_path / role / "spec.json").read_text())
        assert spec["role"] == role
        assert _test_accuracy(tmp_path / role, digits_dataset) > 0.5  # 10 classes: chance 0.1
    soft = [h["soft_loss"] for h in result["student"]["history"]]
    assert all(s > 0 for s in soft), "the student trains on the soft targets"
    assert all(h["soft_loss"] == 0 for h in result["baseline"]["history"])
    # Cached teacher logits are float16 and reused by a second run on the same data.
    cached = sorted((tmp_path / "work" / "cache").glob("logits-*.npy"))
    assert len(cached) == len(small_teachers)
    assert np.load(cached[0]).dtype == np.float16


def test_killed_worker_resumes_from_checkpoint_and_matches_undisturbed_run(
    digits_dataset, soft_path, tmp_path, ray_tmp
):
    """A worker process dies after epoch 2; Ray Train restarts it from the epoch-2
    checkpoint and the run ends where an undisturbed run ends."""
    from kdflow.distill import train_students

    cfg = DistillConfig(student_epochs=4, max_failures=1)
    outs = {"student": tmp_path / "a" / "student"}
    train_students(digits_dataset, cfg, soft_path, outs, tmp_path / "ray", "undisturbed", seed=0)
    outs_b = {"student": tmp_path / "b" / "student"}
    resumed = train_students(
        digits_dataset, cfg, soft_path, outs_b, tmp_path / "ray", "killed", seed=0, fail_at_epoch=2
    )
    assert resumed["student"].epochs == 4
    assert [h["epoch"] for h in resumed["student"].history] == [1, 2, 3, 4]
    # Deterministic batches and restored optimizer state: the same weights, not just close.
    a = _test_accuracy(outs["student"], digits_dataset)
    b = _test_accuracy(outs_b["student"], digits_dataset)
    assert b == pytest.approx(a, abs=0.01)


def test_failure_beyond_max_failures_is_a_clear_error(digits_dataset, soft_path, tmp_path, ray_tmp):
    from kdflow.distill import train_students
    from kdflow.errors import KdflowError

    cfg = DistillConfig(student_epochs=3, max_failures=0)
    with pytest.raises(KdflowError, match="Ray Train run no-retries failed"):
        train_students(
            digits_dataset,
            cfg,
            soft_path,
            {"student": tmp_path / "s"},
            tmp_path / "ray",
            "no-retries",
            seed=0,
            fail_at_epoch=1,
        )
    assert not (tmp_path / "s").exists()


def test_two_workers_train_data_parallel(digits_dataset, soft_path, tmp_path, ray_tmp):
    from kdflow.distill import train_students

    cfg = DistillConfig(student_epochs=2, workers=2)
    result = train_students(
        digits_dataset,
        cfg,
        soft_path,
        {"student": tmp_path / "s"},
        tmp_path / "ray",
        "two-workers",
        seed=0,
    )
    assert result["student"].epochs == 2
    assert _test_accuracy(tmp_path / "s", digits_dataset) > 0.3
