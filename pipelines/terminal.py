"""What `kdflow run` shows in the terminal: step and loop progress, the result tables, the
paths of every artifact.

The steps run in other processes; their log is the one channel back. `RunLog` takes that
log (kfp.local prints it), writes all of it to run.log, and turns the lines that matter
(task started and finished, `kdflow.progress` reports, errors) into a `View`: rich progress
bars on a terminal, one plain line per step and loop otherwise, nothing with --quiet/--json.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from kdflow import progress
from kdflow.evaluation.gates import gate_status

ANSI = re.compile(r"\x1b\[[0-9;]*m")
ERROR_LINE = re.compile(r"kdflow\.errors\.(\w+): (.*)")
TASK_START = re.compile(r"Executing task '([^']+)'")
TASK_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
# run_distillation logs one line per teacher once its inference is done.
TEACHER_DONE = re.compile(r"teacher (\d+) .*: val accuracy")


class View:
    """Shows a run's progress; this base shows nothing (--quiet, --json)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def step_started(self, task: str) -> None: ...

    def step_finished(self, task: str, ok: bool, seconds: float) -> None: ...

    def loop(self, report: progress.Progress) -> None: ...


class PlainView(View):
    """One line per step and per finished loop: for logs and terminals without a cursor."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def step_started(self, task: str) -> None:
        self._line(f"  ▸ {task} ...")

    def step_finished(self, task: str, ok: bool, seconds: float) -> None:
        self._line(f"  {'✓' if ok else '✗'} {task} {'success' if ok else 'failed'} "
                   f"in {seconds:.1f}s")

    def loop(self, report: progress.Progress) -> None:
        if report.total and report.done >= report.total:
            info = f" ({report.info})" if report.info else ""
            self._line(f"    {report.loop}: {report.done}/{report.total}{info}")

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


class RichView(View):
    """Live progress bars: the pipeline's steps, and each loop as it reports."""

    def __init__(self, out: TextIO, steps: int, force_terminal: bool | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}", style="dim"),
            TimeElapsedColumn(),
            console=Console(file=out, force_terminal=force_terminal),
            transient=False,
            # The run's output goes to run.log through RunLog, which has replaced sys.stdout:
            # rich must not take stdout over (it would swallow the log).
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.pipeline = self.progress.add_task("[bold]pipeline steps", total=steps, info="")
        self.steps: dict[str, list[Any]] = {}
        self.loops: dict[str, Any] = {}

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.stop()

    def step_started(self, task: str) -> None:
        tid = self.progress.add_task(f"  {task}", total=1, info="running")
        self.steps.setdefault(task, []).append(tid)

    def step_finished(self, task: str, ok: bool, seconds: float) -> None:
        running = self.steps.get(task) or []
        if running:
            tid = running.pop(0)
            mark = "[green]✓[/]" if ok else "[red]✗[/]"
            self.progress.update(tid, completed=1, description=f"{mark} {task}",
                                 info=f"{seconds:.1f}s" if ok else "failed")
        self.progress.advance(self.pipeline)

    def loop(self, report: progress.Progress) -> None:
        if report.loop not in self.loops:
            self.loops[report.loop] = self.progress.add_task(
                f"    {report.loop}", total=max(report.total, 1), info="")
        info = report.info if len(report.info) <= 36 else report.info[:35] + "…"
        self.progress.update(self.loops[report.loop], completed=report.done,
                             total=max(report.total, 1), info=info)


class RunLog:
    """A file-like sink for the pipeline's output: all of it to `log`, the gist to `view`."""

    def __init__(self, log: TextIO, view: View, echo: TextIO | None = None) -> None:
        self.log, self.view, self.echo = log, view, echo
        self.buffer = ""
        self.lock = threading.Lock()
        self.started: dict[str, list[float]] = {}
        self.errors: list[tuple[str, str]] = []
        self.failed: list[str] = []
        self.teachers_done = 0
        self.teachers_total = 0

    def write(self, text: str) -> int:
        # Parallel teachers print from several threads: keep lines whole.
        with self.lock:
            self.log.write(text)
            if self.echo is not None:
                self.echo.write(text)
            self.buffer += text
            *lines, self.buffer = self.buffer.split("\n")
            for line in lines:
                self._scan(ANSI.sub("", line))
        return len(text)

    def _scan(self, line: str) -> None:
        if match := ERROR_LINE.search(line):
            self.errors.append((match.group(1), match.group(2).strip()))
        if report := progress.parse(line):
            if report.loop == "teacher inference":
                self.teachers_total, self.teachers_done = report.total, report.done
            self.view.loop(report)
        elif (match := TEACHER_DONE.search(line)) and self.teachers_total:
            self.teachers_done += 1
            self.view.loop(progress.Progress("teacher inference", self.teachers_done,
                                             self.teachers_total))
        elif match := TASK_START.search(line):
            self.started.setdefault(match.group(1), []).append(time.monotonic())
            self.view.step_started(match.group(1))
        elif match := TASK_END.search(line):
            task, status = match.groups()
            starts = self.started.get(task) or [time.monotonic()]
            took = time.monotonic() - starts.pop(0)
            if status != "SUCCESS":
                self.failed.append(task)
            self.view.step_finished(task, status == "SUCCESS", took)

    def flush(self) -> None:
        self.log.flush()
        if self.echo is not None:
            self.echo.flush()

    def isatty(self) -> bool:
        return False


# ----------------------------------------------------------------------------- the result


def artifact_paths(out: Path, run_root: Path | None) -> dict[str, str]:
    """Where each artifact of the run lies: the run folder's files (the report and the
    pictures are written from this list), then each step's outputs."""
    found = {label: str(out / name) for label, name in (
        ("summary", "summary.json"), ("report", "report.html"), ("log", "run.log"),
        ("pictures", "plots"))}
    if run_root is None or not run_root.is_dir():
        return found
    wanted = {
        ("validate-data", "dataset"): "prepared dataset",
        ("validate-data", "report"): "validation report",
        ("validate-data", "gx-data-docs"): "GX Data Docs",
        ("distill", "student_model"): "student model",
        ("distill", "baseline_model"): "baseline model",
        ("evaluate", "report"): "evaluation report",
        ("evaluate", "onnx_model"): "student ONNX",
    }
    for (task, name), label in wanted.items():
        for path in sorted(run_root.glob(f"**/{task}/{name}")):
            target = path / "index.html" if name == "gx-data-docs" else path
            found[label] = str(target)
    for i, path in enumerate(sorted(run_root.glob("**/train-teacher/model"))):
        found[f"teacher {i} model"] = str(path)
    return found


def print_result(console: Any, summary: dict[str, Any], artifacts: dict[str, str],
                 mlflow_url: str | None) -> None:
    """The models and gates tables, the registry verdict, every artifact's path."""
    from rich.table import Table

    from kdflow.report.pages import model_rows

    table = Table(title="kdflow: distillation result")
    lm = summary.get("task") == "causal-lm"
    # A causal LM's quality is its perplexity, its latency the time per generated token.
    columns = ("model", "perplexity" if lm else "accuracy", "params",
               "ms per token" if lm else "latency ms", "speed-up vs ensemble")
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in model_rows(summary):
        table.add_row(
            row["name"],
            f"{row['perplexity']:,.3f}" if lm else f"{row['accuracy']:.4f}",
            "" if row.get("params") is None else f"{row['params']:,}",
            "" if row.get("latency_ms") is None else f"{row['latency_ms']:.3f}",
            "" if row.get("speedup") is None else f"{row['speedup']:.1f}×",
            style="bold" if row["role"] == "student" else "",
        )
    console.print(table)
    gates = Table(title="gates")
    for column in ("gate", "result", "value", "threshold"):
        gates.add_column(column)
    for name, g in summary["gates"].items():
        gates.add_row(
            name,
            {"passed": "[green]pass[/]", "inconclusive": "[yellow]inconclusive[/]"}.get(
                gate_status(g), "[bold red]FAIL[/]"),
            "-" if g["value"] is None else str(g["value"]),
            f"{g['op']} {g['threshold']}",
        )
    console.print(gates)
    registered = summary.get("registered")
    if registered:
        console.print(
            f"[green]registered[/] [bold]{registered['name']}[/] version "
            f"[bold]{registered['version']}[/] with aliases "
            f"{', '.join(registered['aliases'])} ({registered['tracking_uri']})"
        )
    else:
        from kdflow.report.pages import not_passed

        console.print("[yellow]not registered[/]: " + (", ".join(not_passed(summary))
                                                       or "every gate passed"))
        for name, g in summary["gates"].items():
            if gate_status(g) != "passed":
                console.print(f"  {name}: {g.get('detail', '')}", highlight=False)
    from kdflow.report.seeds import seeds_sentence

    if seeds_sentence(summary):
        console.print(seeds_sentence(summary), highlight=False)
    cost = summary.get("cost") or {}
    even = (cost.get("break_even_requests") or {}).get("pytorch")
    if cost.get("total"):
        console.print(
            f"cost: {cost['total']['core_s']:,.0f} core-seconds held "
            f"({cost['total']['wall_s']:,.0f} s of steps); the student pays back the cache, "
            "distillation and evaluation after "
            + ("no number of requests (it saves no CPU)" if even is None else
               f"{even:,} batch-1 requests (PyTorch, CPU)"), highlight=False)
    # Paths and URLs stay on one line each, so they can be copied whole.
    if mlflow_url:
        console.print(f"MLflow run: {mlflow_url}", soft_wrap=True, highlight=False)
    console.print("[bold]artifacts[/]")
    for label, path in artifacts.items():
        console.print(f"  {label}: {path}", soft_wrap=True, highlight=False)
