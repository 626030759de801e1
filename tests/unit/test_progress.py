"""Progress reports: the log line a step writes, and what the CLI reads back from it."""

from __future__ import annotations

import json
import logging

from kdflow import progress
from kdflow.steps import _EpochWatcher


def test_a_progress_report_survives_the_trip_through_a_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="kdflow.progress"):
        progress.emit("teacher mlp:hidden=64", 3, 10, "val acc 0.912")
    (line,) = caplog.messages
    # As kfp.local relays a step's log: prefixed and indented.
    relayed = f"    [KFP Executor 2026-11-29 14:27:46,650 INFO]: {line}"
    assert progress.parse(relayed) == progress.Progress(
        "teacher mlp:hidden=64", 3, 10, "val acc 0.912")


def test_lines_without_a_well_formed_report_are_not_progress():
    assert progress.parse("teacher mlp epoch 3 loss 0.2") is None
    assert progress.parse('kdflow-progress {"loop": "x", "done": "three"}') is None
    assert progress.parse("kdflow-progress {not json}") is None


def test_epoch_watcher_reports_each_new_checkpointed_epoch_once(tmp_path, caplog):
    snapshot = tmp_path / "checkpoint_manager_snapshot.json"
    watcher = _EpochWatcher(str(tmp_path), epochs=3)
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
    from kdflow.distill.driver import IN_PROCESS_LATEST

    watcher = _EpochWatcher(str(tmp_path), epochs=2)
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
