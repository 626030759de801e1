"""Submit, schedule and list kdflow runs on a Kubeflow Pipelines cluster.

The CLI's `kdflow submit`, `kdflow schedule` and `kdflow runs` call these functions with a
client from `connect`. They speak to the KFP v2beta1 REST API through `kfp.Client` and turn
whatever a user can get wrong (host, credentials, package, parameters, cron) into one
`RemoteError` whose message names the host and what to fix.

kfp.Client prints links ("Experiment details: ...") on stdout from several methods; the
functions here capture that and log it at DEBUG, so the CLI owns the terminal.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kdflow.errors import KdflowError

if TYPE_CHECKING:
    import kfp

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
"""Seconds to wait for the API to accept a connection or answer the health check."""

READ_TIMEOUT_S = 120.0
"""Seconds to wait for any later answer; an upload of a large pipeline takes a while."""

_TOKEN_ENV = "KFP_TOKEN"
_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"  # the variable kfp's own credentials read


class RemoteError(KdflowError):
    """The KFP API could not be reached, refused a request, or was asked for something invalid."""


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


# --- connecting -----------------------------------------------------------------------------


def connect(
    host: str,
    namespace: str | None = None,
    token: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    read_timeout_s: float = READ_TIMEOUT_S,
) -> kfp.Client:
    """A `kfp.Client` for the KFP API at `host`, checked to answer before it is returned.

    Args:
        host: base URL of the API, with its scheme: `http://localhost:8080` after
            `kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`, or the Kubeflow
            gateway's `https://<domain>/pipeline`.
        namespace: the Kubernetes namespace of a multi-user deployment; None for single-user.
        token: a bearer token; defaults to $KFP_TOKEN, then to the file named by
            $KF_PIPELINES_SA_TOKEN_PATH (a projected service-account token in a pod).
        timeout_s: seconds to wait for a connection or the health check.
        read_timeout_s: seconds to wait for the answer to any later request.

    Raises:
        RemoteError: the host is malformed, unreachable, not a KFP API, refuses the token,
            or is multi-user and no namespace was given.
    """
    host = _normalize_host(host)
    token = token or os.environ.get(_TOKEN_ENV) or _token_from_file()
    health = _check_health(host, token, timeout_s)

    import kfp
    import urllib3
    from kfp_server_api.exceptions import ApiException

    options: dict[str, Any] = {"namespace": namespace} if namespace else {}
    try:
        with _captured_stdout(), warnings.catch_warnings():
            # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later": the
            # health check above already proved a v2beta1 API.
            warnings.simplefilter("ignore", FutureWarning)
            client = kfp.Client(host=host, existing_token=token, **options)
    except (ApiException, urllib3.exceptions.HTTPError, TimeoutError) as exc:
        raise RemoteError(f"Cannot open the KFP API at {host}: {exc}") from exc
    if health.get("multi_user") and not client.get_user_namespace():
        raise RemoteError(
            f"The KFP API at {host} is multi-user: pass --namespace with your profile's namespace"
        )
    _bound_waits(client, timeout_s, read_timeout_s)
    return client


def _normalize_host(host: str) -> str:
    host = host.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", host):
        raise RemoteError(
            f"KFP host {host!r} needs a scheme and a host name, e.g. http://localhost:8080 "
            f"(kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80) or "
            f"https://<kubeflow-domain>/pipeline"
        )
    return host


def _token_from_file() -> str | None:
    path = os.environ.get(_TOKEN_PATH_ENV)
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        raise RemoteError(
            f"${_TOKEN_PATH_ENV} names {path}, which cannot be read ({exc.strerror}): "
            f"unset it or point it at a service-account token"
        ) from exc


def _check_health(host: str, token: str | None, timeout_s: float) -> dict[str, Any]:
    """The API's healthz answer, failing fast where kfp.Client would not: it retries a failing
    health check 5 times with 5 s sleeps, and waits for the operating system's TCP timeout on
    a silent host."""
    import certifi
    import urllib3

    url = f"{host}/apis/v2beta1/healthz"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # The same TLS trust as kfp_server_api (certifi), and no environment proxies, like it.
    pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=certifi.where())
    try:
        response = pool.request(
            "GET",
            url,
            headers=headers,
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
            retries=False,
            redirect=False,
        )
    except urllib3.exceptions.HTTPError as exc:
        raise RemoteError(
            f"Cannot reach the KFP API at {host} ({_reason(exc)}). Check --host and that the "
            f"API is up; for a local port-forward run "
            f"`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80` and use "
            f"http://localhost:8080"
        ) from exc
    finally:
        pool.clear()
    if response.status in (301, 302, 303, 307, 308):
        raise RemoteError(
            f"{url} redirects to {response.headers.get('Location')!r}, a login page: "
            f"pass a token with --token or ${_TOKEN_ENV}"
        )
    if response.status in (401, 403):
        raise RemoteError(
            f"The KFP API at {host} refused the credentials (HTTP {response.status}: "
            f"{_message(response.data)}): pass a valid token with --token or ${_TOKEN_ENV}"
        )
    if response.status == 404:
        raise RemoteError(
            f"{host} has no KFP v2beta1 API ({url} is HTTP 404): point --host at the "
            f"Kubeflow Pipelines endpoint (KFP 2.x)"
        )
    if response.status != 200:
        raise RemoteError(
            f"The KFP API at {host} is unhealthy (HTTP {response.status} from {url}: "
            f"{_message(response.data)})"
        )
    try:
        health = json.loads(response.data)
        if isinstance(health, dict):
            return health
    except ValueError:
        pass
    raise RemoteError(
        f"{url} answered with something other than JSON (a login or proxy page?): point "
        f"--host at the Kubeflow Pipelines API, or pass a token with --token"
    )


def _reason(exc: Exception) -> str:
    # MaxRetryError wraps the error that matters (refused, name not known, timed out).
    return str(getattr(exc, "reason", None) or exc)


def _bound_waits(client: kfp.Client, timeout_s: float, read_timeout_s: float) -> None:
    """Give kfp.Client's later requests timeouts and connection retries.

    kfp_server_api passes `timeout=None` (wait forever) on every request unless the caller
    sets `_request_timeout`, which kfp.Client never does. kfp.Client does not expose its
    connection pool either, so this reaches into kfp_server_api's generated ApiClient and
    does nothing if that ever moves.
    """
    import urllib3

    try:
        pool = client._healthz_api.api_client.rest_client.pool_manager
    except AttributeError:
        log.debug("kfp.Client's connection pool moved; its requests keep no timeout")
        return
    limits = urllib3.Timeout(connect=timeout_s, read=read_timeout_s)
    send = pool.request

    def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = limits
        return send(method, url, *args, **kwargs)

    pool.request = request
    # Retry a connection that failed, never a request the server may have acted on (a POST).
    pool.connection_pool_kw["retries"] = urllib3.Retry(
        total=2, connect=2, read=0, status=0, redirect=0, backoff_factor=0.2
    )
    pool.clear()  # pools made for kfp.Client's own health check predate the retries


# --- submitting and scheduling --------------------------------------------------------------


def submit_run(
    client: kfp.Client,
    package_path: Path,
    params: dict[str, Any],
    experiment: str,
    run_name: str | None = None,
) -> RunInfo:
    """Start one run of a compiled pipeline, in `experiment` (created if missing).

    Args:
        client: from `connect`.
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
    experiment_id = _experiment_id(client, experiment, create=True)
    with _api_call(client, f"create run {run_name!r}"):
        run = client.run_pipeline(
            experiment_id=experiment_id,
            job_name=run_name,
            pipeline_package_path=str(package_path),
            params=params,
        )
    log.info("Created run %s (%s) in experiment %r", run.run_id, run_name, experiment)
    return _run_info(client, run)


def schedule_run(
    client: kfp.Client,
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
        client: from `connect`.
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
    pipeline_id, version_id = _upload(client, package_path, spec["pipelineInfo"]["name"])
    experiment_id = _experiment_id(client, experiment, create=True)
    with _api_call(client, f"create recurring run {job_name!r}"):
        recurring_run = client.create_recurring_run(
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
    return _recurring_run_info(client, recurring_run)


def _upload(client: kfp.Client, package_path: Path, name: str) -> tuple[str, str]:
    """Upload the package as pipeline `name`, or as a new version of it: (pipeline, version)."""
    with _api_call(client, f"look up pipeline {name!r}"):
        pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        with _api_call(client, f"upload pipeline {name!r}"):
            pipeline = client.upload_pipeline(str(package_path), pipeline_name=name)
            # The upload answers with the pipeline only; its first version is the newest one.
            versions = client.list_pipeline_versions(
                pipeline.pipeline_id, page_size=1, sort_by="created_at desc"
            )
        if not versions.pipeline_versions:
            raise RemoteError(
                f"The KFP API at {_host(client)} uploaded pipeline {name!r} but lists no "
                f"version of it: try again, or upload {package_path} in the KFP UI"
            )
        log.info("Uploaded pipeline %r (%s)", name, pipeline.pipeline_id)
        return pipeline.pipeline_id, versions.pipeline_versions[0].pipeline_version_id
    version_name = f"{name} {datetime.now(UTC):%Y-%m-%d %H:%M:%S.%f}"
    with _api_call(client, f"upload a new version of pipeline {name!r}"):
        version = client.upload_pipeline_version(
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
    client: kfp.Client, experiment: str | None = None, page_size: int = 20
) -> list[RunInfo]:
    """The newest runs, in one experiment or in all, newest first.

    Raises:
        RemoteError: there is no experiment of that name, or the API refused.
    """
    experiment_id = _experiment_id(client, experiment, create=False) if experiment else None
    with _api_call(client, "list runs"):
        response = client.list_runs(
            page_size=page_size, sort_by="created_at desc", experiment_id=experiment_id
        )
    return [_run_info(client, run) for run in response.runs or []]


def list_recurring_runs(
    client: kfp.Client, experiment: str | None = None, page_size: int = 20
) -> list[RecurringRunInfo]:
    """The newest recurring runs, in one experiment or in all, newest first.

    Raises:
        RemoteError: there is no experiment of that name, or the API refused.
    """
    experiment_id = _experiment_id(client, experiment, create=False) if experiment else None
    with _api_call(client, "list recurring runs"):
        response = client.list_recurring_runs(
            page_size=page_size, sort_by="created_at desc", experiment_id=experiment_id
        )
    return [_recurring_run_info(client, r) for r in response.recurring_runs or []]


# --- helpers --------------------------------------------------------------------------------


def _experiment_id(client: kfp.Client, name: str, create: bool) -> str:
    namespace = client.get_user_namespace() or None
    if create:
        # kfp's create_experiment looks the name up first and only creates it when missing.
        with _api_call(client, f"get or create experiment {name!r}"):
            return client.create_experiment(name=name, namespace=namespace).experiment_id
    try:
        with _api_call(client, f"look up experiment {name!r}"):
            return client.get_experiment(experiment_name=name, namespace=namespace).experiment_id
    except ValueError as exc:  # kfp: "No experiment is found with name ..." or "Multiple ..."
        found = "several experiments" if str(exc).startswith("Multiple") else "no experiment"
        raise RemoteError(
            f"The KFP API at {_host(client)} has {found} named {name!r}: check the name "
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


def _host(client: kfp.Client) -> str:
    # kfp.Client keeps the host only on its private configuration.
    config = getattr(client, "_existing_config", None)
    return getattr(config, "host", None) or "the KFP API"


def _ui_url(client: kfp.Client, fragment: str) -> str:
    # kfp's own link prefix: the host, or $KF_PIPELINES_UI_ENDPOINT when set.
    prefix = client._get_url_prefix()
    return f"{prefix}/#/{fragment}"


def _run_info(client: kfp.Client, run: Any) -> RunInfo:
    return RunInfo(
        id=run.run_id,
        name=run.display_name or "",
        state=run.state or "UNKNOWN",
        created_at=run.created_at.astimezone(UTC) if run.created_at else None,
        url=_ui_url(client, f"runs/details/{run.run_id}"),
    )


def _recurring_run_info(client: kfp.Client, recurring_run: Any) -> RecurringRunInfo:
    trigger = recurring_run.trigger
    cron = trigger.cron_schedule.cron if trigger and trigger.cron_schedule else ""
    if not cron and trigger and trigger.periodic_schedule:
        cron = f"@every {trigger.periodic_schedule.interval_second}s"
    return RecurringRunInfo(
        id=recurring_run.recurring_run_id,
        name=recurring_run.display_name or "",
        cron=cron or "",
        status=recurring_run.status or "UNKNOWN",
        url=_ui_url(client, f"recurringrun/details/{recurring_run.recurring_run_id}"),
    )


@contextlib.contextmanager
def _captured_stdout() -> Iterator[None]:
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines():
            log.debug("kfp: %s", line)


_HINTS = {
    401: "pass a valid token with --token or $KFP_TOKEN",
    403: "check that the token may use this namespace (--namespace)",
    404: "check the name or id",
    409: "it already exists: choose another name",
}


@contextlib.contextmanager
def _api_call(client: kfp.Client, action: str) -> Iterator[None]:
    """Turn kfp_server_api and connection errors during `action` into a RemoteError."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    host = _host(client)
    try:
        with _captured_stdout():
            yield
    except ApiException as exc:
        hint = _HINTS.get(exc.status or 0)
        if (exc.status or 0) >= 500:
            hint = "the server failed: see `kubectl logs -n kubeflow deploy/ml-pipeline`"
        raise RemoteError(
            f"The KFP API at {host} refused to {action} (HTTP {exc.status}): "
            f"{_message(exc.body) or exc.reason}" + (f"; {hint}" if hint else "")
        ) from exc
    except urllib3.exceptions.HTTPError as exc:
        unanswered = isinstance(getattr(exc, "reason", exc), urllib3.exceptions.ReadTimeoutError)
        advice = (
            "it may still have been done: check with `kdflow runs` before trying again"
            if unanswered and action.startswith(("create", "upload"))
            else "check that the API is up and try again"
        )
        raise RemoteError(
            f"Lost the KFP API at {host} while trying to {action} ({_reason(exc)}): {advice}"
        ) from exc


def _message(body: bytes | str | None) -> str:
    """The message of a KFP error body ({"error", "code", "message", ...}), or the body."""
    if not body:
        return ""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        parsed = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(parsed, dict):
        return str(parsed.get("message") or parsed.get("error") or parsed)
    return text.strip()[:500]
