"""The one way kdflow talks to MLflow: the client, its retries, the store, the tag names.

* **Bounded retries.** Every MLflow call goes through `call`: transport errors, 5xx answers
  and unknown server errors are retried with exponential backoff and jitter (`RetryPolicy`);
  refusals (not found, already exists, invalid value, permission) are not. While kdflow
  calls MLflow, MLflow's own per-request HTTP retries (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`,
  7 with backoff up to minutes) are turned down to `RetryPolicy.http_retries` unless that
  variable is set (`http_settings.applied`), so the policy here is what bounds an outage.
* **One store.** `resolve_tracking_uri` picks the server (or a local sqlite store),
  `mlflow_client` opens it for tracking and the registry alike, `ensure_experiment` finds or
  creates the `kdflow` experiment, and `find_or_create_run` finds the pipeline run's MLflow
  run by its `kdflow.run_id` tag, so every step adds to one record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kdflow.config import check_tracking_uri
from kdflow.config.checks import CONFIG_MAP, in_a_pipeline_pod
from kdflow.errors import ConfigError, KdflowError, RegistryError

log = logging.getLogger(__name__)

EXPERIMENT = "kdflow"
LOCAL_STORE = ".kdflow"

# The tags kdflow writes on runs, model versions and registered models.
RUN_TAG = "kdflow.run_id"
DATA_TAG = "kdflow.data"
DATASET_TAG = "kdflow.dataset_sha256"
VALIDATION_TAG = "kdflow.validation_passed"
SCAN_TAG = "kdflow.validation_content_sha256"
STUDENT_TAG = "kdflow.student"
ACCURACY_TAG = "kdflow.test_accuracy"
ATTEMPT_TAG = "kdflow.register_attempt"
METRICS_TAG = "kdflow.metrics"
ONNX_URI_TAG = "kdflow.onnx_model_uri"
GATES_PASSED_TAG = "kdflow.gates_passed"
PROMOTION_TAG = "kdflow.promotion"
PREVIOUS_TAG = "kdflow.previous_champion"
ROLLED_BACK_TAG = "kdflow.rolled_back"
HISTORY_TAG = "kdflow.champion_history"
LAST_ROLLBACK_TAG = "kdflow.last_rollback"
LOCK_OWNER_TAG = "kdflow.lock_owner"
LOCK_EXPIRES_TAG = "kdflow.lock_expires"

# MLflow error codes that mean "the server answered and refused": retrying cannot help.
REFUSALS = frozenset(
    {
        "RESOURCE_DOES_NOT_EXIST",
        "RESOURCE_ALREADY_EXISTS",
        "ALREADY_EXISTS",
        "NOT_FOUND",
        "INVALID_PARAMETER_VALUE",
        "INVALID_STATE",
        "BAD_REQUEST",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "FEATURE_DISABLED",
        "ENDPOINT_NOT_FOUND",
    }
)
EXISTS = frozenset({"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"})
MISSING = frozenset({"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"})

T = TypeVar("T")


class IncompleteUpload(RegistryError):
    """Model files missing or short in the artifact store after an upload: upload again."""


@dataclass(frozen=True)
class RetryPolicy:
    """How kdflow rides out an MLflow outage; the defaults tolerate about a minute."""

    attempts: int = 5
    """Tries of each MLflow call before the step fails (1: no retry)."""
    first_delay_s: float = 2.0
    """Wait after the first failure; it doubles after each further failure."""
    max_delay_s: float = 30.0
    """Longest wait between two tries."""
    http_retries: int = 1
    """MLflow's own retries of one HTTP request, unless MLFLOW_HTTP_REQUEST_MAX_RETRIES is set."""
    http_timeout_s: int = 60
    """Timeout of one HTTP request, unless MLFLOW_HTTP_REQUEST_TIMEOUT is set."""
    lock_ttl_s: float = 120.0
    """A promotion lock older than this is taken to belong to a dead process and is broken."""
    lock_wait_s: float = 300.0
    """How long to wait for another run's promotion lock before failing."""

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.first_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("RetryPolicy: attempts >= 1 and non-negative delays")

    def delays(self) -> Iterator[float]:
        """Backoff before each retry: first, 2·first, 4·first … capped, with ±25 % jitter
        so concurrent clients do not retry in lockstep."""
        delay = self.first_delay_s
        for _ in range(self.attempts - 1):
            yield min(delay, self.max_delay_s) * random.uniform(0.75, 1.25)
            delay *= 2


# Cleanup after a failure must not wait through a whole second outage.
CLEANUP = RetryPolicy(attempts=2, first_delay_s=1.0)
# A person at the CLI wants an answer within seconds.
INTERACTIVE = RetryPolicy(attempts=3, first_delay_s=1.0, lock_wait_s=60.0)


class _HttpSettings:
    """Turns MLflow's per-request HTTP retries down while kdflow calls MLflow (see module
    docstring). Reference-counted so concurrent registrations in threads share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._set: list[str] = []

    @contextlib.contextmanager
    def applied(self, policy: RetryPolicy) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                wanted = {
                    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(policy.http_retries),
                    "MLFLOW_HTTP_REQUEST_TIMEOUT": str(policy.http_timeout_s),
                }
                for key, value in wanted.items():
                    if key not in os.environ:
                        os.environ[key] = value
                        self._set.append(key)
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    for key in self._set:
                        os.environ.pop(key, None)
                    self._set.clear()


http_settings = _HttpSettings()


def error_code(exc: BaseException) -> str | None:
    """MLflow's error code of `exc` (None for anything but an MlflowException)."""
    from mlflow.exceptions import MlflowException

    return str(exc.error_code) if isinstance(exc, MlflowException) else None


def is_transient(exc: BaseException) -> bool:
    """True for failures a retry can fix: the server was unreachable, timed out, or broke."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, IncompleteUpload):
        return True
    if isinstance(exc, MlflowException):
        return exc.error_code not in REFUSALS
    try:
        import requests

        if isinstance(exc, requests.exceptions.RequestException):
            return True
    except ImportError:  # pragma: no cover - mlflow depends on requests
        pass
    return isinstance(exc, ConnectionError | TimeoutError)


def call(policy: RetryPolicy, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn(*args, **kwargs), retried with backoff while it fails transiently.

    A refusal is re-raised as is, for the caller to handle; transient failures that
    outlast the policy become a RegistryError naming `what`.
    """
    delays = policy.delays()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_transient(exc):
                raise
            delay = next(delays, None)
            if delay is None:
                raise RegistryError(
                    f"could not {what} in {attempt} attempts (backoff up to "
                    f"{policy.max_delay_s:.0f} s): {short_error(exc)}. Check that the MLflow "
                    "tracking server and its artifact store are up, then run the step again"
                ) from exc
            log.warning(
                "could not %s (attempt %d of %d): %s; retrying in %.1f s",
                what,
                attempt,
                policy.attempts,
                short_error(exc),
                delay,
            )
            time.sleep(delay)


def short_error(exc: BaseException, limit: int = 300) -> str:
    """The error's text on one line, cut at `limit` characters; for a login or permission
    refusal, what it means and what to set instead of MLflow's HTTP details."""
    refusal = auth_refusal(exc)
    if refusal is not None:
        return f"the server {refusal}"
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " …"


def auth_refusal(exc: BaseException, what: str = "it") -> str | None:
    """What a 401 or 403 of MLflow's basic-auth app means, as "refused ...; do this" (None for
    any other error). Names the user, never the password."""
    code = error_code(exc)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if code == "UNAUTHENTICATED":
        if user and os.environ.get("MLFLOW_TRACKING_PASSWORD"):
            sent = f"user {user!r} or its password is wrong"
        elif user:
            sent = "no credentials were sent: MLFLOW_TRACKING_PASSWORD is not set"
        else:
            sent = "no credentials were sent: MLFLOW_TRACKING_USERNAME is not set"
        return (
            f"refused the credentials (HTTP 401, {sent}); set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to a user of its basic-auth app (on a cluster: Secret "
            "kdflow-mlflow)"
        )
    if code == "PERMISSION_DENIED":
        who = f"user {user!r}" if user else "the anonymous user"
        return (
            f"refused the request (HTTP 403, {who} has no permission on {what}); an MLflow "
            "admin must grant it one, or use the user that created it"
        )
    return None


@contextlib.contextmanager
def registry_errors(tracking_uri: str, model_name: str) -> Iterator[None]:
    """MLflow's refusals as RegistryErrors that name the model and the server."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        refusal = auth_refusal(exc, model_name)
        if refusal is not None:
            raise RegistryError(f"{tracking_uri} {refusal}") from exc
        if error_code(exc) in MISSING:
            raise RegistryError(
                f"{model_name} is not a registered model in {tracking_uri} ({short_error(exc)})"
            ) from exc
        raise RegistryError(f"{tracking_uri} refused: {short_error(exc)}") from exc


def resolve_tracking_uri(uri: str | None) -> str:
    """The given URI, else $MLFLOW_TRACKING_URI, else a sqlite store under ./.kdflow/; a URI
    without a scheme is refused (MLflow would read `mlruns` or `localhost:5000` as a folder
    and quietly start a new file store there)."""
    given: str | None = None
    option = "--tracking-uri"
    if uri:
        given = check_tracking_uri(uri, option)
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        option = "MLFLOW_TRACKING_URI"
        given = check_tracking_uri(os.environ[option], option)
    _refuse_a_store_in_the_pod(given, option)
    if given:
        return given
    root = Path(LOCAL_STORE).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def _refuse_a_store_in_the_pod(uri: str | None, option: str) -> None:
    """A ConfigError when this is a pipeline step in a pod and `uri` is a store inside the
    pod (none, `sqlite:`, `file:`): it would die with the pod, and the model "registered" in
    it with it, while the champion gate passed for want of a champion."""
    if not in_a_pipeline_pod():
        return
    if uri is None:
        raise ConfigError(
            f"{option}: this step runs in a pod and has no MLflow tracking URI; set "
            f"MLFLOW_TRACKING_URI in the {CONFIG_MAP} ConfigMap (manifests/) or pass "
            "--tracking-uri: a store inside the pod would be lost with it", option=option)
    if uri.startswith(("sqlite:", "file:")):
        raise ConfigError(
            f"{option}: {uri!r} is a file inside this pod, lost with it; give the tracking "
            f"server (http(s)://...) in the {CONFIG_MAP} ConfigMap or --tracking-uri",
            option=option)


def mlflow_client(tracking_uri: str) -> Any:
    """An MlflowClient on `tracking_uri`, for tracking and the model registry alike."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def ensure_experiment(tracking_uri: str, name: str = EXPERIMENT) -> str:
    """The experiment's id; a local sqlite store keeps its artifacts beside the database."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(tracking_uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if tracking_uri.startswith("sqlite:///"):
        location = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException as exc:
        if error_code(exc) not in EXISTS:
            raise
        # Another run created it between our read and our create.
        return str(client.get_experiment_by_name(name).experiment_id)


def find_or_create_run(client: Any, experiment_id: str, run_id: str) -> str:
    """The MLflow run id of pipeline run `run_id` in the experiment, created if missing."""
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_TAG}` = {_quoted(run_id)}", max_results=1
    )
    if found:
        return str(found[0].info.run_id)
    run = client.create_run(experiment_id, run_name=run_id or None, tags={RUN_TAG: run_id})
    return str(run.info.run_id)


def _quoted(value: str) -> str:
    """`value` as an MLflow filter string literal (MLflow's filter syntax has no escapes)."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise KdflowError(f"a run id cannot hold both kinds of quote: {value!r}")


def metric_safe(name: str) -> str:
    """`name` with the characters MLflow refuses in a metric name replaced by `_`."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(name)) or "_"
