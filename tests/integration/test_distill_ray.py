"""Distillation in a real local Ray cluster with Ray Train: the teacher cache, offline and
online KD, a killed worker resuming from its checkpoint, data-parallel workers."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from kdflow.config import DistillConfig
from kdflow.data.prepared import read_split
from kdflow.distill.cache import open_entry
from kdflow.evaluation.metrics import accuracy_of_logits, logits_on
from kdflow.models.artifacts import load_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _test_accuracy(folder: Path, dataset: Path) -> float:
    model, _ = load_model(folder)
    test = read_split(dataset, "test")
    return accuracy_of_logits(logits_on(model, test), test.y)


def _weights(folder: Path) -> dict[str, np.ndarray]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def offline_run(digits_dataset, small_teachers, tmp_path_factory, ray_tmp):
    """An undisturbed offline run: the reference the other runs are compared with."""
    from kdflow.distill.run import distill

    root = tmp_path_factory.mktemp("offline")
    cfg = DistillConfig(student_epochs=3, max_failures=1)
    result = distill(
        digits_dataset,
        small_teachers,
        cfg,
        root / "student",
        root / "baseline",
        root / "work",
        "offline",
        seed=0,
    )
    return root, cfg, result


def test_distill_writes_student_and_baseline_trained_side_by_side(offline_run, digits_dataset):
    root, _, result = offline_run
    for role in ("student", "baseline"):
        assert result[role]["epochs"] == 3
        assert len(result[role]["history"]) == 3
        spec = json.loads((root / role / "spec.json").read_text())
        assert spec["role"] == role
        assert _test_accuracy(root / role, digits_dataset) > 0.5  # 10 classes: chance 0.1
    soft = [h["soft_loss"] for h in result["student"]["history"]]
    assert all(s > 0 for s in soft), "the student trains on the soft targets"
    assert all(h["soft_loss"] == 0 for h in result["baseline"]["history"])


def test_teacher_outputs_are_cached_in_float16_with_weights_and_agreement_logged(
    offline_run, small_teachers
):
    _, _, result = offline_run
    teachers = result["teachers"]
    assert [t["cache_hit"] for t in teachers] == [False, False]
    assert [t["weight"] for t in teachers] == [0.5, 0.5]  # mean_probs: uniform
    assert all(0.5 < t["agreement"] <= 1.0 for t in teachers)
    for t in teachers:
        entry = open_entry(t["cache"])
        assert entry.train_rows(0, entry.meta["rows"])["train"].dtype == np.float16
        assert Path(t["cache"]).parent.parent.name == "teacher-cache"


def test_killed_worker_resumes_from_checkpoint_and_matches_undisturbed_run(
    offline_run, digits_dataset, small_teachers, tmp_path
):
    """A worker process dies after epoch 2; Ray Train restarts it from the epoch-2
    checkpoint and the run ends where an undisturbed run ends. It also reuses the cache."""
    from kdflow.distill.run import distill

    root, cfg, _ = offline_run
    resumed = distill(
        digits_dataset,
        small_teachers,
        cfg,
        tmp_path / "student",
        tmp_path / "baseline",
        root / "work",
        "killed",
        seed=0,
        fail_at_epoch=2,
    )
    assert [t["cache_hit"] for t in resumed["teachers"]] == [True, True]
    assert resumed["student"]["epochs"] == 3
    assert [h["epoch"] for h in resumed["student"]["history"]] == [1, 2, 3]
    # Deterministic batches, restored optimizer and RNG state: the same weights.
    for role in ("student", "baseline"):
        a, b = _weights(root / role), _weights(tmp_path / role)
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-6)
    assert _test_accuracy(tmp_path / "student", digits_dataset) == _test_accuracy(
        root / "student", digits_dataset
    )


def test_online_mode_trains_the_same_student_as_offline_on_unaugmented_data(
    offline_run, digits_dataset, small_teachers, tmp_path
):
    from kdflow.distill.run import distill

    root, cfg, offline = offline_run
    online = distill(
        digits_dataset,
        small_teachers,
        replace(cfg, teacher_mode="online"),
        tmp_path / "student",
        tmp_path / "baseline",
        root / "work",
        "online",
        seed=0,
    )
    assert all(t["cache"] is None for t in online["teachers"])
    a, b = _weights(root / "student"), _weights(tmp_path / "student")
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-5)
    assert online["student"]["val_accuracy"] == offline["student"]["val_accuracy"]


def test_failure_beyond_max_failures_is_a_clear_error(
    offline_run, digits_dataset, small_teachers, tmp_path
):
    from kdflow.distill.run import distill
    from kdflow.errors import KdflowError

    root, _, _ = offline_run
    cfg = DistillConfig(student_epochs=2, max_failures=0)
    with pytest.raises(KdflowError, match="Ray Train run no-retries failed"):
        distill(
            digits_dataset,
            small_teachers,
            cfg,
            tmp_path / "s",
            tmp_path / "b",
            root / "work",
            "no-retries",
            seed=0,
            fail_at_epoch=1,
        )
    assert not (tmp_path / "s").exists()


def test_two_workers_train_data_parallel(offline_run, digits_dataset, small_teachers, tmp_path):
    from kdflow.distill.run import distill

    """DDP, then FSDP (`--parallel fsdp`, one unit: the zoo's MLP has no blocks): the same
    batches give the same weights, while each FSDP worker holds half of them."""
    root, _, _ = offline_run
    results = {}
    for parallel in ("ddp", "fsdp"):
        cfg = DistillConfig(student_epochs=2, workers=2, parallel=parallel)
        results[parallel] = distill(
            digits_dataset,
            small_teachers,
            cfg,
            tmp_path / parallel / "s",
            tmp_path / parallel / "b",
            root / "work",
            f"two-workers-{parallel}",
            seed=0,
        )
    assert results["ddp"]["student"]["epochs"] == 2
    assert _test_accuracy(tmp_path / "ddp" / "s", digits_dataset) > 0.3
    held = {p: r["student"]["history"][0]["worker_params"] for p, r in results.items()}
    assert held["ddp"] == results["ddp"]["student"]["params"]
    assert held["fsdp"] == pytest.approx(held["ddp"] / 2, abs=1)
    for role in ("s", "b"):
        a, b = _weights(tmp_path / "ddp" / role), _weights(tmp_path / "fsdp" / role)
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-5)


def test_in_process_run_trains_the_same_student_as_a_ray_train_worker(
    offline_run, digits_dataset, small_teachers, tmp_path
):
    """`workers=0` runs the same loop in this process (Ray Train's local mode): the same
    batches, losses and checkpoints, so the same weights as the worker process's."""
    from kdflow.distill.run import distill

    root, cfg, offline = offline_run
    result = distill(
        digits_dataset,
        small_teachers,
        replace(cfg, workers=0),
        tmp_path / "student",
        tmp_path / "baseline",
        root / "work",
        "in-process",
        seed=0,
    )
    assert [t["cache_hit"] for t in result["teachers"]] == [True, True]
    for role in ("student", "baseline"):
        a, b = _weights(root / role), _weights(tmp_path / role)
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-5)
        assert result[role]["val_accuracy"] == offline[role]["val_accuracy"]
    checkpoints = sorted(p.name for p in (root / "work/ray/in-process").glob("checkpoint_*"))
    assert checkpoints == ["checkpoint_epoch_000002", "checkpoint_epoch_000003"]  # 2 kept


def test_in_process_run_that_fails_resumes_on_rerun_and_matches_undisturbed_run(
    offline_run, digits_dataset, small_teachers, tmp_path
):
    """In-process, a failure is not retried inside the step: it fails with the run's name,
    and rerunning the same run (what a KFP retry does) resumes after the last epoch saved."""
    from kdflow.distill.run import distill
    from kdflow.errors import KdflowError

    root, cfg, _ = offline_run
    cfg = replace(cfg, workers=0)
    args = (digits_dataset, small_teachers, cfg, tmp_path / "student", tmp_path / "baseline")
    with pytest.raises(KdflowError, match="run in-process-failed failed: fault injected"):
        distill(*args, root / "work", "in-process-failed", seed=0, fail_at_epoch=2)
    assert not (tmp_path / "student").exists(), "no model written from a failed run"
    latest = json.loads((root / "work/ray/in-process-failed/in_process_latest.json").read_text())
    assert latest["epoch"] == 2
    resumed = distill(*args, root / "work", "in-process-failed", seed=0)
    assert [h["epoch"] for h in resumed["student"]["history"]] == [1, 2, 3]
    for role in ("student", "baseline"):
        a, b = _weights(root / role), _weights(tmp_path / role)
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-5)
    # A rerun of the finished run trains nothing and hands back the same models.
    again = distill(*args, root / "work", "in-process-failed", seed=0)
    assert again["student"]["history"] == resumed["student"]["history"]


def test_in_process_run_with_cached_teachers_starts_no_ray(
    offline_run, digits_dataset, small_teachers, tmp_path
):
    """The point of `workers=0`: no Ray start and no worker processes when every teacher's
    outputs are cached. A fresh interpreter, so the suite's own Ray does not count."""
    import subprocess
    import sys

    root, _, _ = offline_run
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "import ray\n"
        "from kdflow.config import DistillConfig\n"
        "from kdflow.distill.run import distill\n"
        "a = json.loads(sys.argv[1])\n"
        "r = distill(Path(a['data']), [Path(t) for t in a['teachers']], "
        "DistillConfig(student_epochs=1, workers=0), Path(a['out']) / 's', Path(a['out']) / 'b', "
        "Path(a['work']), 'no-ray', seed=0)\n"
        "print(json.dumps({'ray': ray.is_initialized(), "
        "'hits': [t['cache_hit'] for t in r['teachers']]}))\n"
    )
    arg = json.dumps(
        {
            "data": str(digits_dataset),
            "teachers": [str(t) for t in small_teachers],
            "out": str(tmp_path),
            "work": str(root / "work"),
        }
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-c", code, arg], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"ray": False, "hits": [True, True]}
    assert (tmp_path / "s" / "model.safetensors").exists()


def test_augmented_online_run_is_reproducible_and_trains_on_noisy_rows(
    offline_run, digits_dataset, small_teachers, tmp_path
):
    """--augment-noise: the teachers label noisy copies of the rows, the baseline trains on
    the same noisy rows; a rerun with the same seed trains the same weights."""
    from kdflow.distill.run import distill

    root, cfg, _ = offline_run
    cfg = replace(cfg, workers=0, teacher_mode="online", augment_noise=0.5)
    runs = []
    for name in ("augmented-a", "augmented-b"):
        out = tmp_path / name
        distill(digits_dataset, small_teachers, cfg, out / "student", out / "baseline",
                root / "work", name, seed=0)
        runs.append(out)
    for role in ("student", "baseline"):
        a, b, plain = (_weights(runs[0] / role), _weights(runs[1] / role), _weights(root / role))
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        assert any(not np.allclose(a[k], plain[k], atol=1e-4) for k in a), role
        assert _test_accuracy(runs[0] / role, digits_dataset) > 0.5
