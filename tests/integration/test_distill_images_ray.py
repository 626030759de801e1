"""Image distillation under real Ray Train workers of a local Ray cluster: function matching
(online teachers label the augmented views the student sees), a killed worker that resumes
from its checkpoint and draws the very views an undisturbed run draws, data-parallel workers
that each augment their own shard, and offline (cached) vs online teachers.

One small CNN teacher (2 epochs on 1 × 8 × 8 digits) serves every test; each run is 3 epochs
of an `mlp:hidden=16` student on 100 training images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from kdflow.config import DistillConfig, TeacherConfig
from tests.unit.image_helpers import prepared_images

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.e2e]

TEACHER = "cnn:channels=4-8,hidden=16"
AUGMENT = ["crop", "rotate", "mixup"]
BATCH = 16
"""The 1-worker runs' batch; the 2-worker runs take 2 × BATCH, so each rank steps on BATCH."""
NORMALISATION = ("mean", "std")
"""The zoo models' input-normalisation buffers: the training split's statistics, not trained
weights (the doubled training split's std differs from the original's: n − 1 of 2n pixels)."""


@dataclass(frozen=True)
class Images:
    """The module's data and its one teacher."""

    root: Path
    dataset: Path
    teacher: Path
    work: Path
    """Storage root of every run here (checkpoints, the teacher cache)."""
    ray_logs: Path
    """Ray's log folder of this session (Ray Train's controller logs)."""


@dataclass(frozen=True)
class Run:
    """One finished distill run: its result and the folders of its two models."""

    name: str
    result: dict[str, Any]
    student: Path
    baseline: Path

    def model(self, role: str) -> Path:
        return self.student if role == "student" else self.baseline


def _weights(folder: Path) -> dict[str, np.ndarray]:
    return load_file(str(folder / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    """Bit-for-bit the same weights (the normalisation buffers included)."""
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        np.testing.assert_array_equal(wb[key], wa[key], err_msg=key)


def _max_difference(a: Path, b: Path) -> float:
    """The largest absolute difference between two saved models' trained weights."""
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert set(NORMALISATION) <= wa.keys(), "the normalisation buffers are named otherwise"
    return max(
        float(np.abs(wa[k].astype(np.float64) - wb[k]).max()) for k in wa if k not in NORMALISATION
    )


def _losses(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A role's history less its timings: what each epoch computed."""
    return [{k: v for k, v in h.items() if k not in ("seconds", "rows_per_s")} for h in history]


def _retries(images: Images, run_name: str) -> int:
    """How many times Ray Train's controller restarted the worker group of `run_name` after
    a failure: its `[FailurePolicy] RETRY` records (Ray Train V2's JSON controller logs)."""
    logs = sorted(images.ray_logs.glob("train/ray-train-sys-controller-*.log"))
    assert logs, f"no Ray Train controller logs under {images.ray_logs}"
    count = 0
    for log in logs:
        for line in log.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            message = str(record.get("message", ""))
            if record.get("run_name") == run_name and message.startswith("[FailurePolicy] RETRY"):
                count += 1
    return count


def _distill(
    images: Images, dataset: Path, cfg: DistillConfig, name: str, fail_at_epoch: int | None = None
) -> Run:
    """One distill run of the module's teacher, into folders named after the run."""
    from kdflow.distill.run import distill

    out = images.root / "runs" / name
    result = distill(
        dataset,
        [images.teacher],
        cfg,
        out / "student",
        out / "baseline",
        images.work,
        name,
        seed=0,
        fail_at_epoch=fail_at_epoch,
    )
    return Run(name, result, out / "student", out / "baseline")


def _cfg(**changes: Any) -> DistillConfig:
    """Function matching in one Ray Train worker; `changes` override."""
    cfg = DistillConfig(
        student="mlp:hidden=16",
        augment=AUGMENT,
        teacher_mode="online",
        workers=1,
        student_epochs=3,
        student_batch_size=BATCH,
        max_failures=1,
    )
    return replace(cfg, **changes)


def _doubled(source: Path, folder: Path) -> Path:
    """A copy of the prepared dataset `source` whose training split is its own twice over
    (rows 0..n-1, then the same rows again): with 2 workers, each rank's contiguous shard is
    then exactly the original training split. Val and test are the original's."""
    from kdflow.data.images import ImageSource, write_prepared_images
    from kdflow.data.sources import open_source

    data = open_source(str(source))
    assert isinstance(data, ImageSource)
    classes = data.meta.classes
    splits = {}
    for split in ("train", "val", "test"):
        blobs, paths = data.images(split), data.paths(split)
        labels = [classes[int(i)] for i in data.labels(split)]
        copies = 2 if split == "train" else 1
        splits[split] = (blobs * copies, paths * copies, labels * copies)
    write_prepared_images(
        folder, splits, classes, data.meta.input_shape, "label", "1" * 64, "doubled"
    )
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, ray_tmp: Path) -> Images:
    """5 classes × 40 digits (100 train, 50 val, 50 test images) and a CNN teacher trained
    on them for 2 epochs, in this process."""
    from kdflow.distill.driver import train_teacher

    root = tmp_path_factory.mktemp("images-ray")
    dataset = prepared_images(root / "dataset", per_class=40, classes=5)
    teacher = root / "teacher"
    train_teacher(
        str(dataset), TEACHER, TeacherConfig(teacher_epochs=2, batch_size=BATCH), 0, teacher
    )
    return Images(root, dataset, teacher, root / "work", ray_tmp / "session_latest" / "logs")


@pytest.fixture(scope="module")
def augmented(images: Images) -> Run:
    """An undisturbed function-matching run in one Ray Train worker: the reference."""
    return _distill(images, images.dataset, _cfg(), "images-augmented")


@pytest.fixture(scope="module")
def plain(images: Images) -> Run:
    """The same run without augmentation, in this process (`workers=0`: the same loop as a
    worker's, without starting worker processes; tests/integration/test_distill_ray.py
    shows it trains a worker's weights)."""
    return _distill(images, images.dataset, _cfg(augment=[], workers=0), "images-plain-online")


def test_function_matching_trains_student_and_baseline_in_a_ray_train_worker(
    images: Images, augmented: Run, plain: Run
) -> None:
    """--augment crop,rotate,mixup with online teachers in a Ray Train worker: every epoch
    the student trains on the KD loss (its soft loss reported) and the baseline on the mixed
    labels alone; both are saved as image models that read uint8 pixels; and the views are
    really augmented (the models are not the unaugmented run's)."""
    from kdflow.data.sources import open_source
    from kdflow.models.artifacts import load_model

    result = augmented.result
    assert [t["cache"] for t in result["teachers"]] == [None], "online: nothing cached"
    assert _retries(images, augmented.name) == 0
    test = open_source(str(images.dataset)).read("test")
    for role in ("student", "baseline"):
        assert result[role]["epochs"] == 3
        history = result[role]["history"]
        assert [h["epoch"] for h in history] == [1, 2, 3]
        assert all(np.isfinite(h["loss"]) and h["hard_loss"] > 0 for h in history)
        folder = augmented.model(role)
        spec = json.loads((folder / "spec.json").read_text())
        assert spec["role"] == role and spec["inputs"] == "image"
        assert spec["image_size"] == [8, 8] and spec["channels"] == 1
        model, _ = load_model(folder)
        with torch.no_grad():
            logits = model(torch.from_numpy(test.x))
        assert test.x.dtype == np.uint8 and logits.shape == (50, 5)
        assert torch.isfinite(logits).all()
        assert _max_difference(folder, plain.model(role)) > 1e-3, f"{role}: not augmented"
    assert all(h["soft_loss"] > 0 for h in result["student"]["history"]), "the KD loss"
    assert all(h["soft_loss"] == 0 for h in result["baseline"]["history"])
    assert _max_difference(augmented.student, augmented.baseline) > 1e-3


def test_killed_augmenting_worker_resumes_with_the_same_views_and_weights(
    images: Images, augmented: Run
) -> None:
    """The worker process dies after epoch 1 and Ray Train restarts it from the epoch-1
    checkpoint. Epochs 2 and 3 draw the views an undisturbed run draws (seeded from the
    seed, the epoch and the rank, not from a generator's state lost with the process), so
    every epoch's losses and the final student and baseline are bit-for-bit the same."""
    resumed = _distill(images, images.dataset, _cfg(), "images-augmented-killed", fail_at_epoch=1)
    assert _retries(images, resumed.name) == 1, "the worker was killed and restarted once"
    for role in ("student", "baseline"):
        history = resumed.result[role]["history"]
        assert [h["epoch"] for h in history] == [1, 2, 3]
        assert _losses(history) == _losses(augmented.result[role]["history"])
        _assert_same_weights(augmented.model(role), resumed.model(role))


def test_two_workers_each_augment_their_own_shard_with_the_rank_in_the_seed(
    images: Images, augmented: Run, plain: Run
) -> None:
    """2 workers on a training split that is the 1-worker run's own twice over: each rank's
    shard, row order and batch are then exactly the 1-worker run's, so rank 0 draws the
    1-worker run's views. Were the rank not in the views' seed, rank 1 would draw them too,
    the all-reduced gradients would be rank 0's alone and the models the 1-worker run's, as
    they are without augmentation (the control, equal but for rounding). With the rank in
    the seed, rank 1's views differ and so do the models. A second 2-worker run, killed
    after epoch 1, resumes to bit-for-bit the same models: each rank's views reproduce."""
    doubled = _doubled(images.dataset, images.root / "doubled")
    cfg = _cfg(workers=2, student_batch_size=2 * BATCH)
    two = _distill(images, doubled, cfg, "images-two-workers")
    killed = _distill(images, doubled, cfg, "images-two-workers-killed", fail_at_epoch=1)
    control = _distill(images, doubled, replace(cfg, augment=[]), "images-two-workers-plain")
    assert _retries(images, killed.name) == 1
    for run in (two, killed, control):
        assert run.result["student"]["epochs"] == 3
        assert all(h["soft_loss"] > 0 for h in run.result["student"]["history"])
    for role in ("student", "baseline"):
        _assert_same_weights(two.model(role), killed.model(role))
        same_views = _max_difference(control.model(role), plain.model(role))
        other_views = _max_difference(two.model(role), augmented.model(role))
        assert same_views < 1e-4, (role, same_views)
        assert other_views > max(1e-3, 100 * same_views), (role, other_views, same_views)


def test_cached_and_online_teachers_train_the_same_image_student(
    images: Images, plain: Run
) -> None:
    """Without augmentation the teachers label the images as they are, and the online run
    rounds their logits as the cache does (float16): the offline run, which fills the cache
    and reads its rows, trains the same student and baseline within float16's rounding."""
    offline = _distill(
        images,
        images.dataset,
        _cfg(augment=[], workers=0, teacher_mode="offline"),
        "images-plain-offline",
    )
    (teacher,) = offline.result["teachers"]
    assert teacher["cache_hit"] is False and Path(teacher["cache"]).is_file()
    assert load_file(teacher["cache"])["train"].dtype == np.float16
    assert plain.result["teachers"][0]["cache"] is None
    for role in ("student", "baseline"):
        wa, wb = _weights(plain.model(role)), _weights(offline.model(role))
        for key in wa:
            np.testing.assert_allclose(wb[key], wa[key], rtol=0, atol=1e-5, err_msg=key)
        assert offline.result[role]["val_accuracy"] == plain.result[role]["val_accuracy"]
    # Not vacuous: the student learned from the teacher, so it is not the baseline.
    assert _max_difference(offline.student, offline.baseline) > 1e-3
