"""Progress reports: the log line a step writes, and what the CLI reads back from it."""

from __future__ import annotations

import logging

from kdflow import progress


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
