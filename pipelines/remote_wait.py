"""`kdflow submit --wait`: follow a run until it ends, and say why it failed.

The run is polled with `get_run` at a growing, bounded interval. When it ends FAILED, the
v2beta1 run's `run_details.task_details` name the failed tasks and their errors. The KFP
API itself serves no logs; the KFP UI server does (`/k8s/pod/logs`, on the same host when
--host is the UI's address or the Kubeflow gateway's /pipeline), so kdflow asks it for the
failed pod's log and, where it cannot be had, says where the log is.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlencode

from pipelines import remote
from pipelines.remote import RemoteError, RunInfo
from pipelines.remote_client import Connection

log = logging.getLogger(__name__)

FIRST_POLL_S = 5.0
"""Seconds between the first polls; the interval grows by POLL_GROWTH up to MAX_POLL_S."""
MAX_POLL_S = 30.0
POLL_GROWTH = 1.5
UNANSWERED_POLLS = 3
"""Polls in a row that may go unanswered (no connection, HTTP 5xx) before the wait fails."""
LOG_TAIL_LINES = 20

SUCCEEDED = "SUCCEEDED"
ENDED = ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED")
EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 124, 130


@dataclass(frozen=True)
class FailedTask:
    """A task of the run that failed, as the API reports it."""

    name: str
    error: str
    pod: str | None
    log_tail: tuple[str, ...] = ()
    """The last lines of the pod's log; empty when the UI server would not give it."""


@dataclass(frozen=True)
class RunEnd:
    """How a wait ended: the run's last state, and why it failed where it did."""

    run: RunInfo
    ended: bool
    """False: the wait timed out with the run still going."""
    elapsed_s: float
    error: str = ""
    """The run's own error message, if the API gives one."""
    failed_tasks: tuple[FailedTask, ...] = ()


def wait_for_run(
    conn: Connection,
    run: RunInfo,
    timeout_s: float | None = None,
    on_state: Callable[[str, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> RunEnd:
    """Poll `run` until it ends or `timeout_s` passes, calling `on_state(state, elapsed_s)`
    on each change of state.

    Raises:
        RemoteError: the API refused a poll, or left UNANSWERED_POLLS + 1 in a row unanswered.
    """
    started = clock()
    deadline = started + timeout_s if timeout_s else None
    interval, unanswered, last = FIRST_POLL_S, 0, run
    seen: str | None = None
    while True:
        try:
            current = remote.get_run(conn, run.id)
        except RemoteError as exc:
            if not _unanswered(exc) or unanswered >= UNANSWERED_POLLS:
                raise
            unanswered += 1
            log.warning("%s (poll %d of %d left unanswered)", exc, unanswered, UNANSWERED_POLLS)
            current = None
        else:
            unanswered = 0
        now = clock()
        if current is not None:
            last = remote.run_info(conn, current)
            if last.state != seen:
                seen = last.state
                if on_state is not None:
                    on_state(last.state, now - started)
            if last.state in ENDED:
                return _ended(conn, current, last, now - started)
        if deadline is not None and now >= deadline:
            return RunEnd(last, ended=False, elapsed_s=now - started)
        sleep(interval if deadline is None else max(0.0, min(interval, deadline - now)))
        interval = min(interval * POLL_GROWTH, MAX_POLL_S)


def _unanswered(exc: RemoteError) -> bool:
    """Whether the poll failed for want of an answer (worth another try), not a refusal."""
    import urllib3

    cause = exc.__cause__
    if isinstance(cause, urllib3.exceptions.HTTPError):
        return True
    status = getattr(cause, "status", None)
    return isinstance(status, int) and (status >= 500 or status == 0)


def _ended(conn: Connection, run: Any, info: RunInfo, elapsed_s: float) -> RunEnd:
    error = (run.error.message or "") if run.error else ""
    failed: tuple[FailedTask, ...] = ()
    if info.state != SUCCEEDED:
        failed = tuple(
            FailedTask(name, message, pod, _log_tail(conn, pod) if pod else ())
            for name, message, pod in failed_tasks(run)
        )
    return RunEnd(info, ended=True, elapsed_s=elapsed_s, error=error, failed_tasks=failed)


def failed_tasks(run: Any) -> list[tuple[str, str, str | None]]:
    """(name, error message, executor pod) of each failed task that holds no failed task
    itself (a failed DAG or loop is named by the task inside it that failed)."""
    details = getattr(run.run_details, "task_details", None) if run.run_details else None
    failed = [t for t in details or [] if t.state == "FAILED"]
    parents = {t.parent_task_id for t in failed if t.parent_task_id}
    out = []
    for task in failed:
        if task.task_id and task.task_id in parents:
            continue
        message = (task.error.message or "") if task.error else ""
        out.append((task.display_name or task.task_id or "a task", message, _executor_pod(task)))
    return out


def _executor_pod(task: Any) -> str | None:
    # KFP 2.x names the pods under child_tasks: a driver and, for a container, its executor.
    if task.pod_name:
        return str(task.pod_name)
    pods = [c.pod_name for c in task.child_tasks or [] if c.pod_name]
    executors = [p for p in pods if "driver" not in p]
    return (executors or pods or [None])[-1]


def _log_tail(conn: Connection, pod: str) -> tuple[str, ...]:
    """The last lines of the pod's main container log from the KFP UI server, or ()."""
    import urllib3

    query = {"podname": pod, **({"podnamespace": conn.namespace} if conn.namespace else {})}
    try:
        response = conn.ui_server.get(
            f"/k8s/pod/logs?{urlencode(query)}", conn.timeout_s, conn.read_timeout_s
        )
    except urllib3.exceptions.HTTPError as exc:
        log.debug("no log of %s from the KFP UI server: %s", pod, exc)
        return ()
    kind = str(response.headers.get("Content-Type") or "")
    if response.status != 200 or "html" in kind or "json" in kind:  # a login page, an API
        log.debug("no log of %s from the KFP UI server: HTTP %s %s", pod, response.status, kind)
        return ()
    lines = response.data.decode(errors="replace").rstrip().splitlines()
    return tuple(lines[-LOG_TAIL_LINES:])


# --- the terminal ---------------------------------------------------------------------------


def follow(
    conn: Connection,
    run: RunInfo,
    timeout_s: float | None,
    command: str = "submit",
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Wait for `run` as `kdflow submit --wait` does, printing each state on its own line:
    0 when it SUCCEEDED, 1 when it FAILED or was CANCELED, 124 when `timeout_s` passed, 130
    on Ctrl-C (the run goes on in the cluster then)."""
    out, err = out or sys.stdout, err or sys.stderr
    bound = f", at most {_duration(timeout_s)}" if timeout_s else ""
    print(f"kdflow: waiting for the run to end{bound} (Ctrl-C stops the wait, not the run)",
          file=out, flush=True)

    def on_state(state: str, elapsed_s: float) -> None:
        print(f"kdflow: run {state} ({_duration(elapsed_s)})", file=out, flush=True)

    try:
        end = wait_for_run(conn, run, timeout_s, on_state)
    except KeyboardInterrupt:
        print(f"kdflow: stopped waiting; run {run.name} ({run.id}) goes on in the cluster: "
              f"{run.url}", file=err)
        return EXIT_INTERRUPTED
    done = end.run
    if not end.ended:
        print(f"kdflow {command}: error: run {done.name} ({done.id}) is still {done.state} "
              f"after {_duration(end.elapsed_s)} (--timeout-s {timeout_s:g}); it goes on in "
              f"the cluster: {done.url}", file=err)
        return EXIT_TIMEOUT
    if done.state == SUCCEEDED:
        print(f"kdflow: run {done.name} SUCCEEDED after {_duration(end.elapsed_s)}", file=out)
        return EXIT_OK
    print(f"kdflow {command}: error: run {done.name} ({done.id}) ended {done.state} after "
          f"{_duration(end.elapsed_s)}", file=err)
    for line in failure_lines(end, conn.namespace):
        print(line, file=err)
    return EXIT_FAILED


def failure_lines(end: RunEnd, namespace: str | None) -> list[str]:
    """What the terminal says about a run that ended without succeeding."""
    lines = []
    for task in end.failed_tasks:
        lines.append(f"  task {task.name} failed: {task.error or 'the API gives no error'}")
        if task.log_tail:
            lines.append(f"  the last {len(task.log_tail)} lines of its log (pod {task.pod}):")
            lines += [f"    | {line}" for line in task.log_tail]
        else:
            kubectl = (
                f", or `kubectl logs -n {namespace or 'kubeflow'} {task.pod} -c main`"
                if task.pod
                else ""
            )
            lines.append(f"  its log: the task's Logs tab at {end.run.url}{kubectl}")
    if not end.failed_tasks:
        if end.error:
            lines.append(f"  {end.error}")
        lines.append(f"  see {end.run.url}")
    return lines


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 120:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
