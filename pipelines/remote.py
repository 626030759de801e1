"""Submit, schedule and list kdflow runs on a Kubeflow Pipelines cluster.

The CLI's `kdflow submit`, `kdflow schedule` and `kdflow runs` call these functions with a
`Connection` from `connect` (pipelines/remote_client.py: the access options, the health
check). They speak to the KFP v2beta1 REST API through `kfp.Client` and turn
whatever a user can get wrong (host, credentials, package, parameters, cron) into one
`RemoteError` whose message names the host and what to fix.

kfp.Client prints links ("Experiment details: ...") on stdout from several methods; the
functions here capture that and log it at DEBUG, so the CLI owns the terminal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from pipelines.remote_client import (
    DEFAULT_TIMEOUT_S,
    READ_TIMEOUT_S,
    Access,
    Connection,
    RemoteError,
    access_options,
    captured_stdout,
    connect,
    failure_reason,
    message,
)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "READ_TIMEOUT_S",
    "Access",
    "Connection",
    "RecurringRunInfo",
    "RemoteError",
    "RunInfo",
    "access_options",
    "connect",
    "get_run",
    "list_recurring_runs",
    "list_runs",
    "run_info",
    "schedule_run",
    "submit_run",
    "validate_cron",
]


@dataclass(frozen=True)
class RunInfo:
    """A pipeline run as `kdflow submit` and `kdflow runs` show it."""

    id: str
    name: str
    state: str
    created_at: datetime | None
    url: str


@dataclass(frozen=True)
class RecurringRunInfo:
    """A recurring run (schedule) as `kdflow schedule` and `kdflow runs` show it."""

    id: str
    name: str
    cron: str
    status: str
    url: str


# --- submitting and scheduling --------------------------------------------------------------


def submit_run(
    conn: Connection,
    package_path: Path,
    params: dict[str, Any],
    experiment: str,
    run_name: str | None = None,
) -> RunInfo:
    """Start one run of a compiled pipeline, in `experiment` (created if missing).

    Args:
        conn: from `connect`.
        package_path: the compiled pipeline YAML.
        params: pipeline parameters; each must be declared by the pipeline, and strings are
            converted to the declared type ("3" for an int), so CLI input passes as is.
        experiment: the experiment's name.
        run_name: defaults to "<pipeline name> <UTC time>".

    Raises:
        RemoteError: the package or a parameter is invalid, or the API refused.
    """
    spec = _read_package(package_path)
    params = _checked_params(spec, params, package_path)
    pipeline_name = spec["pipelineInfo"]["name"]
    run_name = run_name or f"{pipeline_name} {datetime.now(UTC):%Y-%m-%d %H:%M:%S}"
    experiment_id = _experiment_id(conn, experiment, create=True)
    with _api_call(conn, f"create run {run_name!r}"):
        run = conn.client.run_pipeline(
            experiment_id=experiment_id,
            job_name=run_name,
            pipeline_package_path=str(package_path),
            params=params,
        )
    log.info("Created run %s (%s) in experiment %r", run.run_id, run_name, experiment)
    return run_info(conn, run)


def schedule_run(
    conn: Connection,
    package_path: Path,
    params: dict[str, Any],
    experiment: str,
    cron: str,
    job_name: str,
    max_concurrency: int = 1,
    catchup: bool = False,
    enabled: bool = True,
) -> RecurringRunInfo:
    """Upload the pipeline and create a recurring run of it on a cron schedule.

    The package is uploaded as a pipeline named after its `pipelineInfo.name`; when a
    pipeline of that name exists, as a new version of it, so scheduling again after a code
    change never fails on the name and existing schedules keep their version.

    Args:
        conn: from `connect`.
        package_path: the compiled pipeline YAML.
        params: pipeline parameters, checked and converted as in `submit_run`.
        experiment: the experiment's name (created if missing).
        cron: 6 fields with seconds first, as KFP reads them: "0 0 2 * * *" is 02:00 daily.
        job_name: the recurring run's name.
        max_concurrency: how many of its runs may run at once (the API allows 1-10).
        catchup: whether to start the runs missed while the schedule was paused.
        enabled: create it enabled, or paused.

    Raises:
        RemoteError: the cron, the package or a parameter is invalid, or the API refused.
    """
    cron = validate_cron(cron)
    if max_concurrency < 1:
        raise RemoteError(f"--max-concurrency must be at least 1, got {max_concurrency}")
    spec = _read_package(package_path)
    params = _checked_params(spec, params, package_path)
    pipeline_id, version_id = _upload(conn, package_path, spec["pipelineInfo"]["name"])
    experiment_id = _experiment_id(conn, experiment, create=True)
    with _api_call(conn, f"create recurring run {job_name!r}"):
        recurring_run = conn.client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=job_name,
            cron_expression=cron,
            max_concurrency=max_concurrency,
            no_catchup=not catchup,
            pipeline_id=pipeline_id,
            version_id=version_id,
            params=params,
            enabled=enabled,
        )
    log.info("Created recurring run %s (%s) on %r", recurring_run.recurring_run_id, job_name, cron)
    return _recurringrun_info(conn, recurring_run)


def _upload(conn: Connection, package_path: Path, name: str) -> tuple[str, str]:
    """Upload the package as pipeline `name`, or as a new version of it: (pipeline, version)."""
    with _api_call(conn, f"look up pipeline {name!r}"):
        pipeline_id = conn.client.get_pipeline_id(name)
    if pipeline_id is None:
        with _api_call(conn, f"upload pipeline {name!r}"):
            pipeline = conn.client.upload_pipeline(str(package_path), pipeline_name=name)
            # The upload answers with the pipeline only; its first version is the newest one.
            versions = conn.client.list_pipeline_versions(
                pipeline.pipeline_id, page_size=1, sort_by="created_at desc"
            )
        if not versions.pipeline_versions:
            raise RemoteError(
                f"The KFP API at {conn.host} uploaded pipeline {name!r} but lists no "
                f"version of it: try again, or upload {package_path} in the KFP UI"
            )
        log.info("Uploaded pipeline %r (%s)", name, pipeline.pipeline_id)
        return pipeline.pipeline_id, versions.pipeline_versions[0].pipeline_version_id
    version_name = f"{name} {datetime.now(UTC):%Y-%m-%d %H:%M:%S.%f}"
    with _api_call(conn, f"upload a new version of pipeline {name!r}"):
        version = conn.client.upload_pipeline_version(
            str(package_path), pipeline_version_name=version_name, pipeline_id=pipeline_id
        )
    log.info("Uploaded version %r of pipeline %r", version_name, name)
    return pipeline_id, version.pipeline_version_id


_CRON_FIELDS = (  # name, lowest, highest, names (robfig/cron v1, the parser KFP calls)
    ("second", 0, 59, ""),
    ("minute", 0, 59, ""),
    ("hour", 0, 23, ""),
    ("day-of-month", 1, 31, ""),
    ("month", 1, 12, "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC"),
    ("day-of-week", 0, 6, "SUN MON TUE WED THU FRI SAT"),
)
_CRON_DESCRIPTORS = (
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
)


def validate_cron(cron: str) -> str:
    """`cron` with its whitespace normalised, if KFP reads it as intended.

    KFP schedules with robfig/cron v1: six fields, seconds first (second minute hour
    day-of-month month day-of-week), or a descriptor such as "@daily" or "@every 6h".
    It also accepts five fields, reading them as second..month: the usual crontab
    "0 2 * * *" would run at minute 2 of every hour, so five fields are refused here.

    Raises:
        RemoteError: the cron does not have 6 valid fields.
    """
    spec = " ".join(cron.split())
    if spec.startswith("@"):
        every = re.fullmatch(r"@every (\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+", spec)
        if spec in _CRON_DESCRIPTORS or every:
            return spec
        raise RemoteError(
            f"Unknown cron descriptor {spec!r}: use one of {', '.join(_CRON_DESCRIPTORS)}, "
            f"'@every <duration>' (e.g. '@every 6h') or 6 fields like '0 0 2 * * *'"
        )
    fields = spec.split(" ") if spec else []
    if len(fields) == 5:
        raise RemoteError(
            f"Cron {spec!r} has 5 fields, but KFP reads 6 with seconds first (second minute "
            f"hour day-of-month month day-of-week) and would run this one at the wrong times. "
            f"Did you mean '0 {spec}'?"
        )
    if len(fields) != 6:
        raise RemoteError(
            f"Cron {spec!r} has {len(fields)} fields; KFP needs 6, seconds first (second "
            f"minute hour day-of-month month day-of-week), e.g. '0 0 2 * * *' for 02:00 daily"
        )
    for value, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        problem = _cron_field_problem(value, name, low, high, names.split())
        if problem:
            raise RemoteError(f"Cron {spec!r}: {problem}")
    return spec


def _cron_field_problem(value: str, name: str, low: int, high: int, names: list[str]) -> str:
    def number(text: str) -> int | None:
        if text.upper() in names:
            return names.index(text.upper()) + low
        return int(text) if text.isdigit() else None

    for item in value.split(","):
        span, _, step = item.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            return f"the {name} step in {item!r} must be a positive number"
        if span in ("*", "?"):
            if span == "?" and name not in ("day-of-month", "day-of-week"):
                return f"'?' is only allowed for day-of-month and day-of-week, not {name}"
            continue
        ends = [number(part) for part in span.split("-", 1)]
        if any(end is None or not low <= end <= high for end in ends):
            return f"{item!r} is not a {name} in {low}-{high}"
        if len(ends) == 2 and ends[0] > ends[1]:  # type: ignore[operator]
            return f"the {name} range {span!r} runs backwards"
    return ""


# --- listing --------------------------------------------------------------------------------


def list_runs(
    conn: Connection, experiment: str | None = None, page_size: int = 20
) -> list[RunInfo]:
    """The newest runs, in one experiment or in all, newest first.

    Raises:
        RemoteError: there is no experiment of that name, or the API refused.
    """
    experiment_id = _experiment_id(conn, experiment, create=False) if experiment else None
    with _api_call(conn, "list runs"):
        response = conn.client.list_runs(
            page_size=page_size, sort_by="created_at desc", experiment_id=experiment_id
        )
    return [run_info(conn, run) for run in response.runs or []]


def list_recurring_runs(
    conn: Connection, experiment: str | None = None, page_size: int = 20
) -> list[RecurringRunInfo]:
    """The newest recurring runs, in one experiment or in all, newest first.

    Raises:
        RemoteError: there is no experiment of that name, or the API refused.
    """
    experiment_id = _experiment_id(conn, experiment, create=False) if experiment else None
    with _api_call(conn, "list recurring runs"):
        response = conn.client.list_recurring_runs(
            page_size=page_size, sort_by="created_at desc", experiment_id=experiment_id
        )
    return [_recurringrun_info(conn, r) for r in response.recurring_runs or []]


# --- helpers --------------------------------------------------------------------------------


def _experiment_id(conn: Connection, name: str, create: bool) -> str:
    namespace = conn.client.get_user_namespace() or None
    if create:
        # kfp's create_experiment looks the name up first and only creates it when missing.
        with _api_call(conn, f"get or create experiment {name!r}"):
            return conn.client.create_experiment(name=name, namespace=namespace).experiment_id
    try:
        with _api_call(conn, f"look up experiment {name!r}"):
            existing = conn.client.get_experiment(experiment_name=name, namespace=namespace)
        return existing.experiment_id
    except ValueError as exc:  # kfp: "No experiment is found with name ..." or "Multiple ..."
        found = "several experiments" if str(exc).startswith("Multiple") else "no experiment"
        raise RemoteError(
            f"The KFP API at {conn.host} has {found} named {name!r}: check the name "
            f"(kdflow runs without --experiment lists the runs of every experiment)"
        ) from exc


def _read_package(package_path: Path) -> dict[str, Any]:
    """The pipeline spec of a compiled package, checked to be one."""
    path = Path(package_path)
    if not path.is_file():
        raise RemoteError(
            f"Pipeline package {path} does not exist: compile it first (kdflow compile)"
        )
    if path.suffix not in (".yaml", ".yml"):
        raise RemoteError(f"Pipeline package {path} must be the compiled YAML (.yaml or .yml)")
    try:
        spec = next(iter(yaml.safe_load_all(path.read_text())), None)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RemoteError(f"Pipeline package {path} is not YAML: {exc}") from exc
    if not (
        isinstance(spec, dict)
        and isinstance(spec.get("pipelineInfo"), dict)
        and spec["pipelineInfo"].get("name")
        and "root" in spec
    ):
        raise RemoteError(
            f"{path} is not a compiled KFP pipeline (no pipelineInfo.name and root): "
            f"compile it with kdflow compile"
        )
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    try:  # what kfp.Client and the API server parse it into
        json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    except json_format.ParseError as exc:
        raise RemoteError(
            f"{path} is not a valid KFP pipeline spec ({exc}): compile it again with the "
            f"installed kfp"
        ) from exc
    return spec


_PARAMETER_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "STRING": (str, "a string"),
    "NUMBER_INTEGER": (int, "an integer"),
    "NUMBER_DOUBLE": ((int, float), "a number"),
    "BOOLEAN": (bool, "true or false"),
    "LIST": (list, "a JSON list"),
    "STRUCT": (dict, "a JSON object"),
}


def _checked_params(spec: dict[str, Any], params: dict[str, Any], path: Path) -> dict[str, Any]:
    """`params` converted to the pipeline's declared types; unknown or missing ones refused.

    KFP itself accepts any parameters and fails the run later, in the cluster.
    """
    declared = ((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise RemoteError(
            f"{path} takes no parameter {', '.join(map(repr, unknown))}; it takes: "
            f"{', '.join(sorted(declared)) or 'none'}"
        )
    missing = sorted(
        name
        for name, decl in declared.items()
        if name not in params and "defaultValue" not in decl and not decl.get("isOptional")
    )
    if missing:
        raise RemoteError(f"{path} needs parameter(s) {', '.join(missing)}: give a value for each")
    return {
        name: _converted(name, value, declared[name].get("parameterType", "STRING"))
        for name, value in params.items()
    }


def _converted(name: str, value: Any, parameter_type: str) -> Any:
    expected, words = _PARAMETER_TYPES.get(parameter_type, (object, parameter_type))
    if isinstance(value, str) and parameter_type != "STRING":
        try:
            value = json.loads(value.lower() if parameter_type == "BOOLEAN" else value)
        except ValueError:
            pass
    if parameter_type == "NUMBER_DOUBLE" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    wrong_bool = isinstance(value, bool) and parameter_type != "BOOLEAN"
    if wrong_bool or not isinstance(value, expected):
        raise RemoteError(f"Parameter {name!r} must be {words}, got {value!r}")
    return value


def get_run(conn: Connection, run_id: str) -> Any:
    """The run as the API has it now: kfp_server_api's V2beta1Run, with its task details.

    Raises:
        RemoteError: the API refused or did not answer.
    """
    with _api_call(conn, f"get run {run_id}"):
        return conn.client.get_run(run_id)


def run_info(conn: Connection, run: Any) -> RunInfo:
    """A kfp_server_api V2beta1Run as kdflow shows it."""
    return RunInfo(
        id=run.run_id,
        name=run.display_name or "",
        state=run.state or "UNKNOWN",
        created_at=run.created_at.astimezone(UTC) if run.created_at else None,
        url=conn.ui_url(f"runs/details/{run.run_id}"),
    )


def _recurringrun_info(conn: Connection, recurring_run: Any) -> RecurringRunInfo:
    trigger = recurring_run.trigger
    cron = trigger.cron_schedule.cron if trigger and trigger.cron_schedule else ""
    if not cron and trigger and trigger.periodic_schedule:
        cron = f"@every {trigger.periodic_schedule.interval_second}s"
    return RecurringRunInfo(
        id=recurring_run.recurring_run_id,
        name=recurring_run.display_name or "",
        cron=cron or "",
        status=recurring_run.status or "UNKNOWN",
        url=conn.ui_url(f"recurringrun/details/{recurring_run.recurring_run_id}"),
    )


_HINTS = {
    401: "pass a valid token with --token or $KFP_TOKEN, or a fresh session cookie (--cookies)",
    403: "check that the token may use this namespace (--namespace)",
    404: "check the name or id",
    409: "it already exists: choose another name",
}


@contextlib.contextmanager
def _api_call(conn: Connection, action: str) -> Iterator[None]:
    """Turn kfp_server_api and connection errors during `action` into a RemoteError."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    host = conn.host
    try:
        with captured_stdout():
            yield
    except ApiException as exc:
        hint = _HINTS.get(exc.status or 0)
        if (exc.status or 0) >= 500:
            hint = "the server failed: see `kubectl logs -n kubeflow deploy/ml-pipeline`"
        raise RemoteError(
            f"The KFP API at {host} refused to {action} (HTTP {exc.status}): "
            f"{message(exc.body) or exc.reason}" + (f"; {hint}" if hint else "")
        ) from exc
    except urllib3.exceptions.HTTPError as exc:
        unanswered = isinstance(getattr(exc, "reason", exc), urllib3.exceptions.ReadTimeoutError)
        advice = (
            "it may still have been done: check with `kdflow runs` before trying again"
            if unanswered and action.startswith(("create", "upload"))
            else "check that the API is up and try again"
        )
        raise RemoteError(
            f"Lost the KFP API at {host} while trying to {action} ({failure_reason(exc)}): {advice}"
        ) from exc
