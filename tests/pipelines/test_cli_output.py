"""What `kdflow run` and `kdflow report` print: progress, tables, --quiet, --json, errors.

`run` here replays the log of a real local run (lines as kfp.local prints them) through the
CLI's own log reader, with the real summary of tests/runs.py; the whole pipeline under
kfp.local is tests/pipelines/test_local_run.py.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipelines import cli
from pipelines.terminal import ANSI, PlainView, RichView, RunLog, View

# From a real run's run.log (ANSI colours and most lines left out).
REPLAY = """\
14:27:29.997 - INFO - Executing task 'validate-data'
    [KFP Executor 2026-11-29 14:27:30,424 INFO]: kdflow-progress {"loop": "validate data", "done": 0, "total": 3, "info": "contract checks"}
    [KFP Executor 2026-11-29 14:27:34,377 INFO]: kdflow-progress {"loop": "validate data", "done": 3, "total": 3, "info": "data validation passed"}
14:27:38.534 - INFO - Task 'validate-data' finished with status SUCCESS
14:27:38.536 - INFO - Executing task 'train-teacher'
14:27:38.537 - INFO - Executing task 'train-teacher'
            [KFP Executor 2026-11-29 14:27:46,650 INFO]: kdflow-progress {"loop": "teacher mlp:hidden=128", "done": 1, "total": 2, "info": "val acc 0.757"}
            [KFP Executor 2026-11-29 14:27:49,222 INFO]: kdflow-progress {"loop": "teacher mlp:hidden=128", "done": 2, "total": 2, "info": "val acc 0.826"}
            [KFP Executor 2026-11-29 14:27:52,090 INFO]: kdflow-progress {"loop": "teacher cnn:channels=8-16,hidden=32", "done": 2, "total": 2, "info": "val acc 0.674"}
14:27:57.741 - INFO - Task 'train-teacher' finished with status SUCCESS
Task 'train-teacher' finished with status SUCCESS
14:27:59.297 - INFO - Executing task 'distill'
            [KFP Executor 2026-11-29 14:28:01,222 INFO]: kdflow-progress {"loop": "teacher inference", "done": 0, "total": 2, "info": ""}
            [KFP Executor 2026-11-29 14:28:44,692 INFO]: teacher 0 mlp:hidden=128: val accuracy 0.8264, weight 0.500, agreement with the ensemble 0.9306
            [KFP Executor 2026-11-29 14:28:44,692 INFO]: teacher 1 cnn:channels=8-16,hidden=32: val accuracy 0.7014, weight 0.500, agreement with the ensemble 0.7986
            [KFP Executor 2026-11-29 14:29:32,990 INFO]: kdflow-progress {"loop": "distill epochs", "done": 4, "total": 4, "info": "student val acc 0.715"}
14:29:37.858 - INFO - Task 'distill' finished with status SUCCESS
14:29:37.861 - INFO - Executing task 'evaluate'
            [KFP Executor 2026-11-29 14:29:54,214 INFO]: kdflow-progress {"loop": "evaluate", "done": 3, "total": 3, "info": "gates passed"}
14:30:00.633 - INFO - Task 'evaluate' finished with status SUCCESS
14:30:00.643 - INFO - Executing task 'skip-registration'
14:30:07.507 - INFO - Task 'skip-registration' finished with status SUCCESS
"""  # noqa: E501

ARGS = ["run", "--teachers", "mlp:hidden=128", "cnn:channels=8-16,hidden=32"]


@pytest.fixture
def replayed_run(monkeypatch, run_summary, tmp_path) -> dict[str, Any]:
    """`kdflow run` with the pipeline replaced by a replay of a real run's log."""
    seen: dict[str, Any] = {}

    def run_locally(cfg, view: View, verbose: bool = False):
        out = Path(cfg.output)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "run.log").open("w") as log:
            tee = RunLog(log, view)
            view.start()
            tee.write(REPLAY)
            view.stop()
        seen["view"] = view
        return json.loads(json.dumps(run_summary)), tee, out, None

    monkeypatch.setattr(cli, "run_locally", run_locally)
    seen["out"] = tmp_path / "out"
    return seen


def test_run_shows_each_step_and_loop_then_the_tables_and_paths(replayed_run, capsys):
    out = replayed_run["out"]
    assert cli.main([*ARGS, "--output", str(out)]) == cli.EXIT_OK
    printed = capsys.readouterr()
    assert isinstance(replayed_run["view"], PlainView)  # not a terminal: plain lines
    lines = printed.out.splitlines()
    for expected in ("  ✓ validate-data success", "    teacher mlp:hidden=128: 2/2 (val acc",
                     "    teacher inference: 2/2", "    distill epochs: 4/4 (student val acc",
                     "  ✓ evaluate success"):
        assert any(line.startswith(expected) for line in lines), expected
    assert "distilled student" in printed.out and "speed-up vs ensemble" in printed.out
    assert "not registered: every gate passed" in printed.out  # the replay registers nothing
    assert any(line.startswith("cost: ") and "core-seconds held" in line for line in lines)
    assert f"  report: {out / 'report.html'}" in lines
    assert f"  summary: {out / 'summary.json'}" in lines
    assert (out / "report.html").exists() and len(list((out / "plots").glob("*.png"))) == 6
    assert printed.err == ""


def test_progress_bars_on_a_terminal_leave_the_log_whole():
    log, screen = io.StringIO(), io.StringIO()
    view = RichView(screen, steps=6, force_terminal=True)
    tee = RunLog(log, view)
    saved, sys.stdout = sys.stdout, tee  # as run_locally does, then the bars start
    view.start()
    try:
        print(REPLAY, end="")
    finally:
        view.stop()
        sys.stdout = saved
    assert log.getvalue() == REPLAY
    shown = ANSI.sub("", screen.getvalue())
    assert "✓ distill" in shown and "distill epochs" in shown and "4/4" in shown
    assert "Executing task" not in shown  # the log stays in the log


def test_run_quiet_prints_nothing_and_still_writes_the_run_folder(replayed_run, capsys):
    out = replayed_run["out"]
    assert cli.main([*ARGS, "--quiet", "--output", str(out)]) == cli.EXIT_OK
    printed = capsys.readouterr()
    assert (printed.out, printed.err) == ("", "")
    assert json.loads((out / "summary.json").read_text())["student"]["spec"]
    assert (out / "report.html").exists()
    assert "kdflow-progress" in (out / "run.log").read_text()  # the log keeps everything


def test_run_json_prints_only_the_summary(replayed_run, run_summary, capsys):
    out = replayed_run["out"]
    assert cli.main([*ARGS, "--json", "--output", str(out)]) == cli.EXIT_OK
    printed = capsys.readouterr()
    summary = json.loads(printed.out)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["gates"] == run_summary["gates"]
    assert summary["config"]["teachers"]["teachers"] == ARGS[2:]
    assert printed.err == ""


def test_quiet_json_and_verbose_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*ARGS, "--quiet", "--json"])
    assert exit_info.value.code == cli.EXIT_USAGE
    assert "not allowed with argument" in capsys.readouterr().err


def test_report_command_writes_the_page_into_the_run_folder(run_dir, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    assert cli.main(["report", str(folder)]) == cli.EXIT_OK
    assert capsys.readouterr().out == f"kdflow: wrote {folder / 'report.html'}\n"
    page = (folder / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") == 6
    elsewhere = tmp_path / "elsewhere" / "page.html"
    assert cli.main(["report", str(folder), "-o", str(elsewhere)]) == cli.EXIT_OK
    assert elsewhere.read_text().count("data:image/png;base64,") == 6


@pytest.mark.parametrize("make", [
    lambda p: p / "missing",                      # no such folder
    lambda p: p,                                  # a folder without summary.json
    lambda p: (p / "summary.json").write_text("[1, 2]") and p,  # not a summary
])
def test_report_on_a_folder_that_is_not_a_run_is_one_line_and_exit_2(make, tmp_path):
    target = make(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "report", str(target)],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[2])
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdflow report: error: "), proc.stderr
    assert "summary.json" in lines[0]
    assert "Traceback" not in proc.stderr


def test_an_inconclusive_gate_is_named_with_its_evidence(run_summary):
    from rich.console import Console

    from pipelines.terminal import print_result

    summary = json.loads(json.dumps(run_summary))
    summary["passed"] = False
    summary["gates"]["beats_baseline"] |= {
        "passed": False, "status": "inconclusive",
        "detail": "cannot tell the student from its baseline: +0.8 points, 95% CI [-0.8, +2.7]"}
    out = io.StringIO()
    print_result(Console(file=out, width=200), summary, {}, None)
    text = out.getvalue()
    assert "not registered: beats_baseline (inconclusive)" in text
    assert "  beats_baseline: cannot tell the student from its baseline: +0.8 points" in text
    assert "│ beats_baseline            │ inconclusive │" in text
