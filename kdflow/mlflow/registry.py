"""The MLflow model registry: register the student with lineage, move its aliases safely.

MLflow 3 uses aliases, not stages: every registered version gets `challenger`; `champion`
moves to it only when every gate passed and the promotion policy is `auto` (`kdflow
promote` / `kdflow rollback` move it by hand).

How registration stays consistent
---------------------------------
* **Artifacts before versions.** The student is uploaded as two logged models of one MLflow
  run, a pyfunc ("models from code", `kdflow/mlflow/serving.py`, loading the safetensors folder: no
  pickle) and an ONNX model. Their files are listed back from the artifact store and checked
  (names and byte sizes) before a model version is created from the pyfunc, and aliases are
  set only once that version is READY. So an outage at any point leaves no version without
  its artifacts and no alias on an incomplete version.
* **Bounded retries.** Every MLflow call goes through `_call`: transport errors, 5xx answers
  and unknown server errors are retried with exponential backoff and jitter (`RetryPolicy`);
  refusals (not found, already exists, invalid value, permission) are not. While kdflow
  calls MLflow, MLflow's own per-request HTTP retries (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`,
  7 with backoff up to minutes) are turned down to `RetryPolicy.http_retries` unless that
  variable is set, so the policy here is what bounds an outage. Creating a version is
  find-or-create by MLflow run id, so a retry after a lost answer does not duplicate it.
* **Clean failure.** When retries run out, the step undoes what it did (puts moved aliases
  back, deletes the version it created, marks its run FAILED; each best effort, since the
  server may still be down) and raises RegistryError naming the step that failed.
* **Concurrent promotion.** Moving `champion` happens under a promotion lock: a registered
  model named `<name>.kdflow-lock`, which only one writer can create (the server's unique
  constraint on model names is the test-and-set). The lock carries its owner and expiry; a
  lock past its expiry (its holder died) is broken. Under the lock a run re-reads the
  champion: if it is still the version the run's gates were evaluated against, the new
  version is promoted; if another run moved it meanwhile, the new version is promoted only
  when its test accuracy (tag `kdflow.test_accuracy`) on the same test data (tag
  `kdflow.dataset_sha256`) is higher. Two runs finishing together therefore both register,
  and `champion` ends on the better one whichever takes the lock first.
* **History.** Every champion move appends to the registered model's tag
  `kdflow.champion_history`; `rollback` walks it back and tags the demoted version
  `kdflow.rolled_back`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import kdflow
from kdflow.errors import RegistryError

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
EXPERIMENT = "kdflow"
LOCAL_STORE = ".kdflow"
PYFUNC_NAME = "student"
ONNX_NAME = "student-onnx"
LOCK_SUFFIX = ".kdflow-lock"
HISTORY_TAG = "kdflow.champion_history"
HISTORY_LENGTH = 50
ACCURACY_TAG = "kdflow.test_accuracy"
DATASET_TAG = "kdflow.dataset_sha256"
METRICS_TAG = "kdflow.metrics"
ONNX_URI_TAG = "kdflow.onnx_model_uri"
PREVIOUS_TAG = "kdflow.previous_champion"
ROLLED_BACK_TAG = "kdflow.rolled_back"
EPS = 1e-9

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


# ----------------------------------------------------------------------- MLflow plumbing


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


_http = _HttpSettings()


def _error_code(exc: BaseException) -> str | None:
    from mlflow.exceptions import MlflowException

    return str(exc.error_code) if isinstance(exc, MlflowException) else None


def _transient(exc: BaseException) -> bool:
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


def _call(policy: RetryPolicy, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
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
            if not _transient(exc):
                raise
            delay = next(delays, None)
            if delay is None:
                raise RegistryError(
                    f"could not {what} in {attempt} attempts (backoff up to "
                    f"{policy.max_delay_s:.0f} s): {_short(exc)}. Check that the MLflow "
                    "tracking server and its artifact store are up, then run the step again"
                ) from exc
            log.warning(
                "could not %s (attempt %d of %d): %s; retrying in %.1f s",
                what,
                attempt,
                policy.attempts,
                _short(exc),
                delay,
            )
            time.sleep(delay)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " …"


def resolve_tracking_uri(uri: str | None) -> str:
    """The given URI, else $MLFLOW_TRACKING_URI, else a sqlite store under ./.kdflow/."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(LOCAL_STORE).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def ensure_experiment(tracking_uri: str, name: str = EXPERIMENT) -> str:
    """The experiment's id; a local sqlite store keeps its artifacts beside the database."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if tracking_uri.startswith("sqlite:///"):
        location = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException as exc:
        if _error_code(exc) not in EXISTS:
            raise
        # Another run created it between our read and our create.
        return str(client.get_experiment_by_name(name).experiment_id)


def _version_by_alias(client: Any, model_name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if _error_code(exc) in MISSING or "not found" in str(exc).lower():
            return None
        raise


def champion_version(
    tracking_uri: str, model_name: str, policy: RetryPolicy | None = None
) -> Any | None:
    """The ModelVersion holding the `champion` alias, or None when there is none."""
    from mlflow.exceptions import MlflowException

    policy = policy or RetryPolicy()
    try:
        with _http.applied(policy):
            return _call(
                policy,
                f"read {model_name}@{CHAMPION}",
                _version_by_alias,
                _client(tracking_uri),
                model_name,
                CHAMPION,
            )
    except MlflowException as exc:
        raise RegistryError(
            f"cannot read {model_name}@{CHAMPION} from {tracking_uri}: {_short(exc)}"
        ) from exc


def download_model(
    tracking_uri: str, model_uri: str, dest: Path, policy: RetryPolicy | None = None
) -> Path:
    """Download a registered kdflow pyfunc and return its safetensors model folder."""
    import mlflow
    from mlflow.exceptions import MlflowException

    policy = policy or RetryPolicy()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        with _http.applied(policy):
            local = Path(
                _call(
                    policy,
                    f"download {model_uri}",
                    mlflow.artifacts.download_artifacts,
                    artifact_uri=model_uri,
                    dst_path=str(dest),
                )
            )
    except MlflowException as exc:
        raise RegistryError(f"cannot download {model_uri} from {tracking_uri}: {exc}") from exc
    folder: Path | None = local / "artifacts" / PYFUNC_NAME
    if folder is None or not folder.is_dir():
        folder = _artifact_folder(local)
    if folder is None or not (folder / "spec.json").is_file():
        raise RegistryError(
            f"{model_uri} is not a kdflow model (no `{PYFUNC_NAME}` artifact with a spec.json)"
        )
    return folder


def _artifact_folder(local: Path) -> Path | None:
    """The `student` artifact's folder as the MLmodel file records it (older kdflow
    versions named it after the folder that was logged)."""
    import yaml

    try:
        mlmodel = yaml.safe_load((local / "MLmodel").read_text())
        path = mlmodel["flavors"]["python_function"]["artifacts"][PYFUNC_NAME]["path"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    return local / path


def resolve_model_uri(
    tracking_uri: str, model_uri: str, policy: RetryPolicy | None = None
) -> dict[str, Any]:
    """`models:/name@alias` or `models:/name/version` -> its name, version and a URI pinned
    to that version (lineage for teachers imported from the registry)."""
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", model_uri)
    if not match:
        return {"uri": model_uri}
    name, alias, number = match.groups()
    if alias:
        policy = policy or RetryPolicy()
        with _http.applied(policy), _registry_errors(tracking_uri, name):
            found = _call(policy, f"resolve {model_uri}", _version_by_alias,
                          _client(tracking_uri), name, alias)
        if found is None:
            return {"uri": model_uri, "name": name}
        number = str(found.version)
    return {"uri": model_uri, "name": name, "version": int(number),
            "pinned_uri": f"models:/{name}/{number}"}


def code_version() -> str:
    """kdflow's version, plus the git commit when kdflow runs from a checkout."""
    root = Path(kdflow.__file__).resolve().parent.parent
    if (root / ".git").exists():
        try:
            sha = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
            if sha:
                return f"{kdflow.__version__}+g{sha}"
        except (OSError, subprocess.SubprocessError):
            pass
    return kdflow.__version__


# --------------------------------------------------------------------------- registration


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of an evaluation summary, named for MLflow."""
    metrics: dict[str, float] = {}
    student = summary["student"]
    for key in (
        "accuracy", "macro_f1", "ece", "nll", "agreement", "params", "file_bytes", "flops",
        "latency_ms", "latency_p95_ms", "throughput_per_s",
    ):
        if student.get(key) is not None:
            metrics[f"student_{key}"] = float(student[key])
    for key, value in (student.get("onnx") or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics[f"onnx_{key}"] = float(value)
    for name, acc in (student.get("per_class_accuracy") or {}).items():
        metrics[f"student_class_accuracy/{_metric_safe(name)}"] = float(acc)
    for role in ("baseline", "ensemble"):
        for key in ("accuracy", "macro_f1", "ece", "nll", "latency_ms"):
            if summary[role].get(key) is not None:
                metrics[f"{role}_{key}"] = float(summary[role][key])
    for i, teacher in enumerate(summary.get("teachers", [])):
        for key in ("accuracy", "latency_ms", "params"):
            if teacher.get(key) is not None:
                metrics[f"teacher{i}_{key}"] = float(teacher[key])
    if summary.get("champion"):
        metrics["champion_accuracy"] = float(summary["champion"]["accuracy"])
    for name, gate in (summary.get("gates") or {}).items():
        if gate.get("value") is not None:
            metrics[f"gate_{name}"] = float(gate["value"])
    return metrics


def _metric_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(name)) or "_"


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The few numbers `kdflow models list` shows, kept in one version tag."""
    student = summary["student"]
    onnx = student.get("onnx") or {}
    return {
        key: value
        for key, value in {
            "accuracy": student.get("accuracy"),
            "macro_f1": student.get("macro_f1"),
            "ece": student.get("ece"),
            "latency_ms": student.get("latency_ms"),
            "onnx_latency_ms": onnx.get("latency_ms"),
            "params": student.get("params"),
            "file_bytes": student.get("file_bytes"),
        }.items()
        if value is not None
    }


@dataclass
class _Undo:
    """What a failed registration has to put back."""

    version: str | None = None
    aliases: dict[str, str | None] | None = None  # alias -> version it held before


def register_student(
    student_dir: Path,
    summary: dict[str, Any],
    tracking_uri: str,
    model_name: str,
    promote: bool,
    tags: dict[str, str],
    onnx_path: Path | None = None,
    policy: RetryPolicy | None = None,
) -> dict[str, Any]:
    """Log the student (pyfunc + ONNX) in a run, register it, tag lineage, set aliases.

    `summary` is the evaluation summary (its metrics are logged on the run, and
    `summary["champion_seen"]` is the champion version the gates compared against);
    `onnx_path` is the exported ONNX file. Returns the `registered` summary entry.
    """
    import mlflow

    policy = policy or RetryPolicy()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = _client(tracking_uri)
    undo = _Undo(aliases={})
    run_id: str | None = None
    with _http.applied(policy):
        try:
            experiment_id = _call(policy, "find or create the experiment", ensure_experiment,
                                  tracking_uri)
            run_id = _call(policy, "find or create the MLflow run", _pipeline_run, client,
                           experiment_id, tags)
            pyfunc_id, onnx_id = _log_models(
                client, policy, experiment_id, run_id, student_dir, onnx_path, summary, tags
            )
            version_tags = {
                **tags,
                # What concurrent promotion compares: accuracy, and the data it was measured on.
                ACCURACY_TAG: repr(float(summary["student"]["accuracy"])),
                DATASET_TAG: summary["dataset"]["sha256"],
                METRICS_TAG: json.dumps(_headline(summary), sort_keys=True),
                "kdflow.gates_passed": str(bool(summary.get("passed"))).lower(),
                "kdflow.promotion": "auto" if promote else "manual",
            }
            if onnx_id:
                version_tags[ONNX_URI_TAG] = f"models:/{onnx_id}"
            version = _create_version(client, policy, model_name, pyfunc_id, run_id,
                                      version_tags, undo)
            undo.aliases = {CHALLENGER: _alias_target(client, policy, model_name, CHALLENGER)}
            _call(policy, f"set {model_name}@{CHALLENGER}", client.set_registered_model_alias,
                  model_name, CHALLENGER, version)
            aliases = [CHALLENGER]
            promotion = {"promoted": False, "detail": "promotion policy is manual"}
            if promote:
                promotion = _auto_promote(
                    client, policy, model_name, version, summary, run_id, undo
                )
                if promotion["promoted"]:
                    aliases.append(CHAMPION)
        except Exception as exc:
            _abandon(client, model_name, run_id, undo)
            if isinstance(exc, RegistryError):
                raise
            raise RegistryError(
                f"registering {model_name} in {tracking_uri} failed: {_short(exc)}"
            ) from exc
        # Registered and aliased: the rest is bookkeeping and must not undo the version.
        try:
            _call(CLEANUP, "mark the run finished", client.set_terminated, run_id, "FINISHED")
        except Exception as exc:  # the version is complete; say so and go on
            log.warning("registered, but could not mark run %s finished: %s", run_id, exc)
    log.info(
        "registered %s version %s with aliases %s (run %s): %s",
        model_name, version, aliases, run_id, promotion["detail"],
    )
    return {
        "name": model_name,
        "version": int(version),
        "aliases": aliases,
        "run_id": run_id,
        "tracking_uri": tracking_uri,
        "model_uri": f"models:/{model_name}/{version}",
        "onnx_model_uri": f"models:/{onnx_id}" if onnx_id else None,
        "promoted": promotion["promoted"],
        "promotion_detail": promotion["detail"],
    }


def _pipeline_run(client: Any, experiment_id: str, tags: dict[str, str]) -> str:
    """The pipeline run's MLflow run (the validate step may have opened it), with `tags`."""
    from kdflow.mlflow.tracking import RUN_TAG, find_or_create_run

    if not tags.get(RUN_TAG):
        return str(client.create_run(experiment_id, tags=tags).info.run_id)
    from mlflow.entities import RunTag

    run_id = find_or_create_run(client, experiment_id, tags[RUN_TAG])
    client.update_run(run_id, status="RUNNING")
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    return run_id


def _log_models(
    client: Any,
    policy: RetryPolicy,
    experiment_id: str,
    run_id: str,
    student_dir: Path,
    onnx_path: Path | None,
    summary: dict[str, Any],
    tags: dict[str, str],
) -> tuple[str, str | None]:
    """Upload the run's metrics and summary, then both models, each checked on arrival.

    An upload that breaks off or arrives incomplete is retried as a new logged model; the
    broken one is never registered.
    """
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in summary_metrics(summary).items()]
    _call(policy, "log the metrics", client.log_batch, run_id, metrics=metrics)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "summary.json"
        path.write_text(json.dumps(summary, indent=2))
        _call(policy, "upload summary.json", client.log_artifact, run_id, str(path))
        # MLflow names a pyfunc artifact folder after the local folder: stage it as `student`.
        staged = Path(tmp) / PYFUNC_NAME
        shutil.copytree(student_dir, staged)
        expected: dict[str, int | None] = {"MLmodel": None}
        for name in ("model.safetensors", "spec.json"):
            expected[f"artifacts/{PYFUNC_NAME}/{name}"] = (staged / name).stat().st_size
        pyfunc_id = _call(policy, "upload the pyfunc model", _upload_checked, _log_pyfunc,
                          expected, client, experiment_id, run_id, staged, tags)
    onnx_id = None
    if onnx_path is not None:
        expected = {"MLmodel": None, "model.onnx": onnx_path.stat().st_size}
        onnx_id = _call(policy, "upload the ONNX model", _upload_checked, _log_onnx, expected,
                        client, experiment_id, run_id, onnx_path, student_dir, tags)
    return pyfunc_id, onnx_id


def _upload_checked(
    log_model: Callable[..., str], expected: dict[str, int | None], client: Any, *args: Any
) -> str:
    model_id = log_model(client, *args)
    _check_uploaded(client, model_id, expected)
    return model_id


def _input_example(student_dir: Path) -> Any:
    """One row at the training features' mean: a realistic example for the signature."""
    import pandas as pd
    from safetensors.numpy import load_file

    from kdflow.models.artifacts import read_spec

    spec = read_spec(student_dir)
    mean = load_file(str(student_dir / "model.safetensors"))["mean"].astype("float32")
    return pd.DataFrame([mean], columns=spec["feature_names"])


def _pinned(*packages: str) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in packages:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def _log_pyfunc(
    client: Any, experiment_id: str, run_id: str, student_dir: Path, tags: dict[str, str]
) -> str:
    import mlflow
    import pandas as pd
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import infer_signature

    example = _input_example(student_dir)
    signature = infer_signature(example, pd.DataFrame({"label": ["0"], "probability": [0.5]}))
    model = client.create_logged_model(
        experiment_id, name=PYFUNC_NAME, source_run_id=run_id, tags=tags, model_type="kdflow"
    )
    mlflow.pyfunc.log_model(
        name=PYFUNC_NAME,
        model_id=model.model_id,
        python_model=str(Path(__file__).with_name("serving.py")),
        artifacts={PYFUNC_NAME: str(student_dir)},
        code_paths=[str(Path(kdflow.__file__).parent)],
        signature=signature,
        input_example=example,
        pip_requirements=_pinned("torch", "safetensors", "numpy", "pandas", "mlflow"),
    )
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    return str(model.model_id)


def _log_onnx(
    client: Any,
    experiment_id: str,
    run_id: str,
    onnx_path: Path,
    student_dir: Path,
    tags: dict[str, str],
) -> str:
    import mlflow.onnx
    import numpy as np
    import onnx
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import infer_signature

    from kdflow.models.artifacts import read_spec
    from kdflow.models.onnx import INPUT_NAME, OUTPUT_NAME

    spec = read_spec(student_dir)
    example = _input_example(student_dir).to_numpy(np.float32)
    signature = infer_signature(
        {INPUT_NAME: example},
        {OUTPUT_NAME: np.zeros((1, int(spec["n_classes"])), np.float32)},
    )
    model = client.create_logged_model(
        experiment_id, name=ONNX_NAME, source_run_id=run_id, tags=tags, model_type="kdflow-onnx"
    )
    mlflow.onnx.log_model(
        onnx.load(str(onnx_path)),
        name=ONNX_NAME,
        model_id=model.model_id,
        signature=signature,
        input_example={INPUT_NAME: example},
        save_as_external_data=False,
        # The student is built for CPU serving; a GPU build of onnxruntime can override it.
        onnx_execution_providers=["CPUExecutionProvider"],
        pip_requirements=_pinned("onnx", "onnxruntime", "numpy", "mlflow"),
    )
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    return str(model.model_id)


def _check_uploaded(client: Any, model_id: str, expected: dict[str, int | None]) -> None:
    """Every expected file is in the artifact store (with its byte size, when given)."""
    folders: dict[str, dict[str, int | None]] = {}
    for path in expected:
        parent = str(Path(path).parent)
        if parent not in folders:
            listing = client.list_logged_model_artifacts(
                model_id, None if parent == "." else parent
            )
            folders[parent] = {str(Path(f.path).name): f.file_size for f in listing}
    for path, size in expected.items():
        found = folders[str(Path(path).parent)]
        name = Path(path).name
        if name not in found:
            raise IncompleteUpload(f"uploaded model {model_id} lacks {path}")
        uploaded = found[name]
        if size is not None and uploaded is not None and int(uploaded) != size:
            raise IncompleteUpload(
                f"uploaded {path} of model {model_id} has {uploaded} bytes, expected {size}"
            )


def _create_version(
    client: Any,
    policy: RetryPolicy,
    model_name: str,
    model_id: str,
    run_id: str,
    tags: dict[str, str],
    undo: _Undo,
) -> str:
    from mlflow.exceptions import MlflowException

    try:
        _call(policy, f"create registered model {model_name}", client.create_registered_model,
              model_name, description="Students distilled by kdflow.")
    except MlflowException as exc:
        if _error_code(exc) not in EXISTS:
            raise

    def find_or_create() -> Any:
        found = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
        if found:
            return found[0]
        return client.create_model_version(
            model_name, f"models:/{model_id}", run_id=run_id, tags=tags,
            await_creation_for=0, model_id=model_id,
        )

    created = _call(policy, f"create a version of {model_name}", find_or_create)
    undo.version = str(created.version)
    _call(policy, f"wait for {model_name} version {created.version}", _wait_ready, client,
          model_name, str(created.version))
    return str(created.version)


def _wait_ready(client: Any, model_name: str, version: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(client.get_model_version(model_name, version).status)
        if status.endswith("READY"):
            return
        if status.endswith("FAILED_REGISTRATION"):
            raise RegistryError(f"{model_name} version {version}: the server failed to register it")
        if time.monotonic() > deadline:
            raise RegistryError(
                f"{model_name} version {version} still {status} after {timeout_s:.0f} s"
            )
        time.sleep(1.0)


def _alias_target(client: Any, policy: RetryPolicy, model_name: str, alias: str) -> str | None:
    found = _call(policy, f"read {model_name}@{alias}", _version_by_alias, client, model_name,
                  alias)
    return None if found is None else str(found.version)


def _abandon(client: Any, model_name: str, run_id: str | None, undo: _Undo) -> None:
    """Undo a failed registration as far as the server lets us (it may still be down)."""
    for alias, previous in (undo.aliases or {}).items():
        with contextlib.suppress(Exception):
            if _alias_target(client, CLEANUP, model_name, alias) == undo.version:
                if previous is None:
                    _call(CLEANUP, "remove an alias", client.delete_registered_model_alias,
                          model_name, alias)
                else:
                    _call(CLEANUP, "restore an alias", client.set_registered_model_alias,
                          model_name, alias, previous)
    if undo.version is None and run_id is not None:
        # The create may have landed with its answer lost: find the version by its run.
        with contextlib.suppress(Exception):
            found = _call(CLEANUP, "look for a half-registered version",
                          client.search_model_versions,
                          f"name='{model_name}' and run_id='{run_id}'")
            undo.version = str(found[0].version) if found else None
    if undo.version is not None:
        try:
            _call(CLEANUP, "delete the half-registered version", client.delete_model_version,
                  model_name, undo.version)
            log.warning("deleted %s version %s: its registration failed", model_name,
                        undo.version)
        except Exception as exc:  # best effort; the version's files are complete
            log.error(
                "could not delete %s version %s after the failure (%s); its artifacts are "
                "complete but it has no alias: delete it or promote it by hand",
                model_name, undo.version, _short(exc),
            )
    if run_id is not None:
        with contextlib.suppress(Exception):
            _call(CLEANUP, "mark the run failed", client.set_terminated, run_id, "FAILED")


# ------------------------------------------------------------------------ the champion


@contextlib.contextmanager
def promotion_lock(client: Any, model_name: str, policy: RetryPolicy) -> Iterator[str]:
    """Hold `<model_name>.kdflow-lock` (a registered model only one writer can create)."""
    from mlflow.exceptions import MlflowException

    lock = model_name + LOCK_SUFFIX
    owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + policy.lock_wait_s
    while True:
        expires = time.time() + policy.lock_ttl_s
        try:
            _call(policy, "take the promotion lock", client.create_registered_model, lock,
                  tags={"kdflow.lock_owner": owner, "kdflow.lock_expires": f"{expires:.3f}"},
                  description=f"kdflow promotion lock for {model_name}; deleted when released")
            break
        except MlflowException as exc:
            if _error_code(exc) not in EXISTS:
                raise
        holder = _lock_holder(client, policy, lock)
        if holder is None:
            continue  # released between our create and our read
        if holder[0] == owner:
            break  # our own create landed, its answer was lost
        if time.time() > holder[1]:
            log.warning("breaking promotion lock %s held by %s: it expired", lock, holder[0])
            with contextlib.suppress(MlflowException):
                _call(policy, "break a stale promotion lock", client.delete_registered_model,
                      lock)
            continue
        if time.monotonic() > deadline:
            raise RegistryError(
                f"promotion lock {lock!r} is held by {holder[0]} (expires "
                f"{datetime.fromtimestamp(holder[1], UTC):%H:%M:%S} UTC); if no kdflow "
                f"registration is running, delete the registered model {lock!r} and retry"
            )
        time.sleep(random.uniform(0.2, 0.6))
    try:
        yield owner
    finally:
        try:
            _call(CLEANUP, "release the promotion lock", client.delete_registered_model, lock)
        except Exception as exc:  # it expires after lock_ttl_s anyway
            log.warning("could not release promotion lock %s (%s); it expires in %.0f s",
                        lock, _short(exc), policy.lock_ttl_s)


def _lock_holder(client: Any, policy: RetryPolicy, lock: str) -> tuple[str, float] | None:
    from mlflow.exceptions import MlflowException

    try:
        model = _call(policy, "read the promotion lock", client.get_registered_model, lock)
    except MlflowException as exc:
        if _error_code(exc) in MISSING:
            return None
        raise
    tags = model.tags or {}
    return tags.get("kdflow.lock_owner", "?"), float(tags.get("kdflow.lock_expires", 0))


def _history(client: Any, policy: RetryPolicy, model_name: str) -> list[int]:
    model = _call(policy, f"read {model_name}", client.get_registered_model, model_name)
    try:
        return [int(v) for v in json.loads((model.tags or {}).get(HISTORY_TAG, "[]"))]
    except (ValueError, TypeError):
        return []


def _move_champion(
    client: Any,
    policy: RetryPolicy,
    model_name: str,
    version: str,
    previous: str | None,
    history: list[int],
) -> None:
    """Point `champion` at `version` (call under the promotion lock).

    The alias moves last: when a tag write fails, the champion has not moved yet. A
    history entry for a move that then failed is skipped by `rollback` (it checks that
    a version still exists and is not the current champion).
    """
    if previous is not None and previous != version:
        _call(policy, "record the previous champion", client.set_model_version_tag,
              model_name, version, PREVIOUS_TAG, previous)
    history = (history + [int(version)])[-HISTORY_LENGTH:]
    _call(policy, "record the champion history", client.set_registered_model_tag,
          model_name, HISTORY_TAG, json.dumps(history))
    _call(policy, f"set {model_name}@{CHAMPION}", client.set_registered_model_alias,
          model_name, CHAMPION, version)


def _auto_promote(
    client: Any,
    policy: RetryPolicy,
    model_name: str,
    version: str,
    summary: dict[str, Any],
    run_id: str,
    undo: _Undo,
) -> dict[str, Any]:
    """Move `champion` to `version` unless a better champion appeared since evaluation."""
    seen = summary.get("champion_seen")
    seen = None if seen is None else str(seen)
    accuracy = float(summary["student"]["accuracy"])
    dataset = summary["dataset"]["sha256"]
    with promotion_lock(client, model_name, policy):
        current = _call(policy, f"read {model_name}@{CHAMPION}", _version_by_alias, client,
                        model_name, CHAMPION)
        current_v = None if current is None else str(current.version)
        if current_v == version:
            return {"promoted": True, "detail": "already champion"}
        if current is not None and current_v != seen:
            tags = current.tags or {}
            theirs = tags.get(ACCURACY_TAG)
            if tags.get(DATASET_TAG) != dataset or theirs is None:
                return {
                    "promoted": False,
                    "detail": f"champion moved to v{current_v} during this run and was tested "
                    f"on other data; compare them and run `kdflow promote {model_name} "
                    f"{version}` if this one is better",
                }
            if accuracy <= float(theirs) + EPS:
                return {
                    "promoted": False,
                    "detail": f"champion moved to v{current_v} during this run and is at least "
                    f"as accurate ({float(theirs):.4f} vs {accuracy:.4f})",
                }
        undo.aliases = {**(undo.aliases or {}), CHAMPION: current_v}
        _move_champion(client, policy, model_name, version, current_v,
                       _history(client, policy, model_name))
    detail = "first champion" if current_v is None else f"replaces v{current_v}"
    return {"promoted": True, "detail": detail}


def promote(
    tracking_uri: str, model_name: str, version: int | str, policy: RetryPolicy | None = None
) -> dict[str, Any]:
    """Point `champion` at `version` by hand; the old champion is kept for rollback."""
    policy = policy or RetryPolicy()
    client = _client(tracking_uri)
    version = str(version)
    with _http.applied(policy), _registry_errors(tracking_uri, model_name):
        _require_version(client, policy, model_name, version)
        with promotion_lock(client, model_name, policy):
            current = _alias_target(client, policy, model_name, CHAMPION)
            if current == version:
                return {"name": model_name, "champion": int(version), "previous": None,
                        "changed": False}
            _move_champion(client, policy, model_name, version, current,
                           _history(client, policy, model_name))
    log.info("%s@champion: v%s -> v%s", model_name, current, version)
    return {"name": model_name, "champion": int(version),
            "previous": None if current is None else int(current), "changed": True}


def rollback(
    tracking_uri: str, model_name: str, policy: RetryPolicy | None = None
) -> dict[str, Any]:
    """Point `champion` back at the previous champion and tag the demoted version."""
    policy = policy or RetryPolicy()
    client = _client(tracking_uri)
    with _http.applied(policy), _registry_errors(tracking_uri, model_name):
        with promotion_lock(client, model_name, policy):
            current = _call(policy, f"read {model_name}@{CHAMPION}", _version_by_alias, client,
                            model_name, CHAMPION)
            if current is None:
                raise RegistryError(f"{model_name} has no champion to roll back")
            current_v = str(current.version)
            history = _history(client, policy, model_name)
            while history and str(history[-1]) == current_v:
                history.pop()
            target = None
            while history and target is None:
                candidate = str(history.pop())
                if candidate != current_v and _exists(client, policy, model_name, candidate):
                    target = candidate
            if target is None:
                fallback = (current.tags or {}).get(PREVIOUS_TAG)
                if fallback and _exists(client, policy, model_name, fallback):
                    target = fallback
            if target is None:
                raise RegistryError(
                    f"no earlier champion of {model_name} is recorded; pick one with "
                    f"`kdflow models list {model_name}` and run `kdflow promote {model_name} "
                    "VERSION`"
                )
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            _call(policy, "tag the demoted version", client.set_model_version_tag, model_name,
                  current_v, ROLLED_BACK_TAG, stamp)
            _call(policy, f"set {model_name}@{CHAMPION}", client.set_registered_model_alias,
                  model_name, CHAMPION, target)
            _call(policy, "record the rollback", client.set_registered_model_tag, model_name,
                  "kdflow.last_rollback",
                  json.dumps({"from": int(current_v), "to": int(target), "at": stamp}))
            _call(policy, "record the champion history", client.set_registered_model_tag,
                  model_name, HISTORY_TAG, json.dumps(history + [int(target)]))
    log.info("%s@champion rolled back: v%s -> v%s", model_name, current_v, target)
    return {"name": model_name, "champion": int(target), "previous": int(current_v)}


def _exists(client: Any, policy: RetryPolicy, model_name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        _call(policy, f"read {model_name} version {version}", client.get_model_version,
              model_name, version)
        return True
    except MlflowException as exc:
        if _error_code(exc) in MISSING:
            return False
        raise


def _require_version(client: Any, policy: RetryPolicy, model_name: str, version: str) -> None:
    if not version.isdigit() or not _exists(client, policy, model_name, version):
        raise RegistryError(
            f"{model_name} has no version {version}; `kdflow models list {model_name}` lists them"
        )


@contextlib.contextmanager
def _registry_errors(tracking_uri: str, model_name: str) -> Iterator[None]:
    """MLflow's refusals as RegistryErrors that name the model and the server."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if _error_code(exc) in MISSING:
            raise RegistryError(
                f"{model_name} is not a registered model in {tracking_uri} ({_short(exc)})"
            ) from exc
        raise RegistryError(f"{tracking_uri} refused: {_short(exc)}") from exc


# ------------------------------------------------------------------------ list, compare


def list_versions(
    tracking_uri: str, model_name: str, policy: RetryPolicy | None = None
) -> list[dict[str, Any]]:
    """Every version of `model_name`, newest first, with aliases and headline metrics."""
    policy = policy or RetryPolicy()
    client = _client(tracking_uri)
    with _http.applied(policy), _registry_errors(tracking_uri, model_name):
        model = _call(policy, f"read {model_name}", client.get_registered_model, model_name)
        versions = _call(policy, f"list versions of {model_name}", client.search_model_versions,
                         f"name='{model_name}'")
    aliases: dict[str, list[str]] = {}
    for alias, number in (model.aliases or {}).items():
        aliases.setdefault(str(number), []).append(alias)
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = v.tags or {}
        try:
            headline = json.loads(tags.get(METRICS_TAG, "{}"))
        except ValueError:
            headline = {}
        rows.append(
            {
                "version": int(v.version),
                "aliases": sorted(aliases.get(str(v.version), [])),
                "created": datetime.fromtimestamp(v.creation_timestamp / 1000, UTC),
                "status": str(v.status),
                "run_id": v.run_id,
                "pipeline_run": tags.get("kdflow.run_id"),
                "dataset_sha256": tags.get(DATASET_TAG),
                "student": tags.get("kdflow.student"),
                "rolled_back": tags.get(ROLLED_BACK_TAG),
                "metrics": headline,
            }
        )
    return rows


def compare_versions(
    tracking_uri: str,
    model_name: str,
    first: int | str,
    second: int | str,
    policy: RetryPolicy | None = None,
) -> dict[str, Any]:
    """Metrics of two versions' runs side by side, and the lineage tags that differ."""
    policy = policy or RetryPolicy()
    client = _client(tracking_uri)
    out: dict[str, Any] = {"name": model_name, "versions": [int(first), int(second)]}
    with _http.applied(policy), _registry_errors(tracking_uri, model_name):
        found = []
        for number in (str(first), str(second)):
            _require_version(client, policy, model_name, number)
            version = _call(policy, f"read version {number}", client.get_model_version,
                            model_name, number)
            run = _call(policy, f"read the run of version {number}", client.get_run,
                        version.run_id)
            found.append((version, run))
    metrics = sorted(set(found[0][1].data.metrics) | set(found[1][1].data.metrics))
    out["metrics"] = {
        key: [run.data.metrics.get(key) for _, run in found] for key in metrics
    }
    tag_keys = sorted(
        k for k in set(found[0][0].tags or {}) | set(found[1][0].tags or {})
        if k.startswith("kdflow.") and k != METRICS_TAG
    )
    out["tags"] = {
        key: [(v.tags or {}).get(key) for v, _ in found]
        for key in tag_keys
        if (found[0][0].tags or {}).get(key) != (found[1][0].tags or {}).get(key)
    }
    out["same_test_data"] = (found[0][0].tags or {}).get(DATASET_TAG) == (
        found[1][0].tags or {}
    ).get(DATASET_TAG)
    return out
