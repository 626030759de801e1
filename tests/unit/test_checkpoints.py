"""Checkpoints of the loop (`kdflow.distill.checkpoints`): the RNG round trip, a resumed
role that trains on as the undisturbed one does, and an in-process run's own folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from kdflow.config import DistillConfig
from kdflow.data.sources import DataSource, open_source
from kdflow.distill.checkpoints import (
    IN_PROCESS_LATEST,
    latest_in_process,
    persist_in_process,
    restore_training,
    restore_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from kdflow.distill.loop import WorkerJob, batches, build_roles, epoch_order, run_epoch
from kdflow.distill.step import Role
from kdflow.distill.tasks import Classification
from kdflow.models.artifacts import load_tensors
from tests.unit.distill_helpers import prepared

CPU = torch.device("cpu")


def test_checkpoint_rng_state_round_trips():
    torch.manual_seed(3)
    np.random.seed(3)
    tensors, meta = rng_state()
    first = (torch.rand(3), np.random.rand(3))
    set_rng_state(tensors, meta)
    again = (torch.rand(3), np.random.rand(3))
    assert torch.equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])


def _roles(data) -> tuple[DataSource, list[Role]]:
    job = WorkerJob(
        cfg=DistillConfig(student="mlp:hidden=8", student_epochs=3),
        dataset=str(data),
        roles=["baseline", "teacher"],
        seed=0,
        run_dir="",
    )
    source = open_source(str(data))
    return source, build_roles(job, source, CPU, None)


def _train_epoch(roles: list[Role], source: DataSource, epoch: int) -> None:
    train = source.read("train")
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    for role in roles:
        steps = batches(x, y, epoch_order(len(x), len(x), epoch), 16, CPU)
        run_epoch(role, steps, Classification(), 2.0, CPU)
        role.scheduler.step()


def test_roles_restored_from_a_checkpoint_train_on_as_the_undisturbed_roles(tmp_path):
    """Weights, Adam's moments, the schedule and the best epoch come back: the next epoch
    gives the same weights as an undisturbed run's."""
    data = prepared(tmp_path / "data")
    source, undisturbed = _roles(data)
    _train_epoch(undisturbed, source, 1)
    teacher = undisturbed[1]
    teacher.best_acc = 0.5
    teacher.best_state = {k: v.clone() for k, v in teacher.classifier.state_dict().items()}
    save_checkpoint(tmp_path / "ckpt", undisturbed, 1, [{"epoch": 1}])

    _, resumed = _roles(data)
    tensors, state = load_tensors(tmp_path / "ckpt")
    assert (state["epoch"], state["history"]) == (1, [{"epoch": 1}])
    restore_weights(resumed, tensors)
    restore_training(resumed, tensors, state)
    assert resumed[1].best_acc == 0.5 and resumed[1].best_state is not None
    assert resumed[0].best_state is None, "the baseline keeps no best epoch"
    for key, value in teacher.best_state.items():
        torch.testing.assert_close(resumed[1].best_state[key], value, rtol=0, atol=0)
    assert [r.scheduler.last_epoch for r in resumed] == [1, 1]

    _train_epoch(undisturbed, source, 2)
    _train_epoch(resumed, source, 2)
    for a, b in zip(undisturbed, resumed, strict=True):
        for key, value in a.classifier.state_dict().items():
            torch.testing.assert_close(b.classifier.state_dict()[key], value, rtol=0, atol=0)


def test_an_in_process_run_keeps_its_last_two_checkpoints_and_points_at_the_latest(tmp_path):
    data = prepared(tmp_path / "data")
    source, roles = _roles(data)
    run_dir = str(tmp_path / "run")
    assert latest_in_process(run_dir) is None, "a new run starts from scratch"
    history = []
    for epoch in (1, 2, 3):
        history.append({"epoch": epoch, "baseline/loss": 1.0 / epoch})
        persist_in_process(run_dir, roles, epoch, history)
    folders = sorted(p.name for p in (tmp_path / "run").glob("checkpoint_*"))
    assert folders == ["checkpoint_epoch_000002", "checkpoint_epoch_000003"]
    pointer = json.loads((tmp_path / "run" / IN_PROCESS_LATEST).read_text())
    assert pointer["epoch"] == 3 and pointer["metrics"] == history[-1]
    with latest_in_process(run_dir).as_directory() as folder:
        _, state = load_tensors(Path(folder))
    assert state["epoch"] == 3 and state["history"] == history
