"""What `kdflow.steps` adds around the core: the ensemble's plan (teachers that fit the
data, a seed per member), and the distill step's epoch reports, read from the checkpoints
Ray Train (or the in-process loop) records."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from kdflow import progress
from kdflow.config import DataConfig, TeacherConfig
from kdflow.data.prepared import frame_sha256, split_frame, write_prepared
from kdflow.distill.watcher import EpochWatcher
from kdflow.models.artifacts import read_spec
from kdflow.steps import plan_teachers, train_teacher, validate_data


def _prepared(folder, input_shape):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(120, 8)).astype(np.float32),
                         columns=[f"f{i}" for i in range(8)])
    frame["label"] = rng.integers(0, 2, 120)
    train, test = split_frame(frame, "label", 0.2, 0)
    train, val = split_frame(train, "label", 0.2, 0)
    write_prepared(folder, {"train": train, "val": val, "test": test}, "label", input_shape,
                   frame_sha256(frame), "unit")
    return folder


@pytest.mark.parametrize(("shape", "family"), [
    (None, "mlp"), ([2, 4], "cnn1d"), ([2, 2, 2], "cnn"),
])
def test_auto_teachers_fit_the_shape_of_the_data(tmp_path, shape, family, caplog):
    dataset = _prepared(tmp_path / "data", shape)
    with caplog.at_level(logging.INFO, logger="kdflow.steps"):
        plan = plan_teachers(dataset, TeacherConfig(), seed=0)
    assert len(plan) == 3
    assert {p["spec"].split(":")[0] for p in plan} == {family}
    assert [p["index"] for p in plan] == [0, 1, 2]
    assert any("teachers for samples of shape" in m and plan[0]["spec"] in m
               for m in caplog.messages), "the run says which teachers it picked"


def test_identical_teacher_specs_get_their_own_seeds_and_train_different_models(tmp_path):
    dataset = _prepared(tmp_path / "data", None)
    cfg = TeacherConfig(teachers=["mlp:hidden=8"] * 2, teacher_epochs=2)
    plan = plan_teachers(dataset, cfg, seed=3)
    assert plan[0]["seed"] == 3, "member 0 keeps the run's seed"
    assert plan[0]["seed"] != plan[1]["seed"]
    assert plan == plan_teachers(dataset, cfg, seed=3), "the plan is a function of the seed"
    assert plan[1]["seed"] != plan_teachers(dataset, cfg, seed=4)[1]["seed"]
    folders = []
    for member in plan:
        folder = tmp_path / f"teacher-{member['index']}"
        result = train_teacher(dataset, member["spec"], cfg, member["seed"], folder,
                               index=member["index"])
        assert (result["seed"], result["index"]) == (member["seed"], member["index"])
        folders.append(folder)
    specs = [read_spec(f) for f in folders]
    assert [(s["seed"], s["index"]) for s in specs] == [(p["seed"], p["index"]) for p in plan]
    assert specs[0]["weights_sha256"] != specs[1]["weights_sha256"]


def test_epoch_watcher_reports_each_new_checkpointed_epoch_once(tmp_path, caplog):
    snapshot = tmp_path / "checkpoint_manager_snapshot.json"
    watcher = EpochWatcher(str(tmp_path), epochs=3)
    with caplog.at_level(logging.INFO, logger="kdflow.progress"):
        watcher.poll()  # no snapshot yet: nothing
        for epoch in (1, 1, 3):
            snapshot.write_text(json.dumps({"latest_checkpoint_result": {
                "metrics": {"epoch": epoch, "student/val_accuracy": 0.5 + epoch / 10}}}))
            watcher.poll()
        snapshot.write_text('{"latest_checkpoint_res')  # caught mid-write
        watcher.poll()
    reports = [progress.parse(m) for m in caplog.messages]
    assert reports == [
        progress.Progress("distill epochs", 1, 3, "student val acc 0.600"),
        progress.Progress("distill epochs", 3, 3, "student val acc 0.800"),
    ]


def test_epoch_watcher_follows_an_in_process_run_by_its_checkpoint_pointer(tmp_path, caplog):
    from kdflow.distill.checkpoints import IN_PROCESS_LATEST

    watcher = EpochWatcher(str(tmp_path), epochs=2)
    with caplog.at_level(logging.INFO, logger="kdflow.progress"):
        for epoch in (1, 2):
            (tmp_path / IN_PROCESS_LATEST).write_text(json.dumps({
                "epoch": epoch, "path": str(tmp_path / f"checkpoint_epoch_{epoch:06d}"),
                "metrics": {"epoch": epoch, "student/val_accuracy": 0.9}}))
            watcher.poll()
    assert [progress.parse(m) for m in caplog.messages] == [
        progress.Progress("distill epochs", 1, 2, "student val acc 0.900"),
        progress.Progress("distill epochs", 2, 2, "student val acc 0.900"),
    ]


def test_step_results_stay_small_enough_to_cross_steps(tmp_path):
    """Outputs travel in the next step's executor input: one argv string under kfp.local
    (128 KiB at most on Linux). A 600-feature dataset with constant columns and a long
    history must stay well under that."""
    from kdflow.steps import MAX_FEATURE_STATS, MAX_FINDINGS, compact_history

    rng = np.random.default_rng(0)
    values = rng.normal(size=(300, 600)).astype("float32")
    values[:, :100] = 0.0  # 100 constant features: 100 warnings
    frame = pd.DataFrame(values, columns=[f"f{i}" for i in range(600)])
    frame["label"] = [i % 3 for i in range(300)]
    frame.to_parquet(tmp_path / "wide.parquet")
    info = validate_data(DataConfig(data=str(tmp_path / "wide.parquet")), 0,
                         tmp_path / "dataset", tmp_path / "report.md")
    validation = info["validation"]
    assert len(validation["statistics"]["train"]["features"]) == MAX_FEATURE_STATS
    assert validation["statistics"]["train"]["features_omitted"] == 600 - MAX_FEATURE_STATS
    assert len(validation["warnings"]) == MAX_FINDINGS
    assert validation["warnings_omitted"] == 100 - MAX_FINDINGS
    assert len(json.dumps(info)) < 64 * 1024
    assert "## Warnings (100)" in (tmp_path / "report.md").read_text()  # the report: all

    history = [{"epoch": e, "loss": 1 / 3 + e, "hard_loss": 0.123456789, "soft_loss": 2e-7,
                "val_accuracy": 0.987654321, "rows_per_s": 123456.789, "seconds": 0.1}
               for e in range(1, 501)]
    compact = compact_history(history)
    assert compact[0] == {"epoch": 1, "loss": 1.3333, "hard_loss": 0.12346, "soft_loss": 2e-7,
                          "val_accuracy": 0.98765}
    assert len(json.dumps(compact)) < 64 * 1024
