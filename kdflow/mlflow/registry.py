"""The MLflow model registry: register the student with lineage, then set its aliases.

Every registered version gets `challenger`; `champion` moves to it only when every gate
passed and the promotion policy is `auto` (`kdflow promote` / `kdflow rollback` move it by
hand: `kdflow.mlflow.promotion`).

How registration stays consistent
---------------------------------
* **Artifacts before versions.** The student's pyfunc and ONNX models are uploaded and
  checked first (`kdflow.mlflow.logged_models`); a model version is created from the pyfunc
  only then, and aliases are set only once that version is READY. So an outage at any point
  leaves no version without its artifacts and no alias on an incomplete version.
* **Bounded retries.** Every MLflow call is retried by `kdflow.mlflow.client.call`.
  Creating a version is find-or-create by MLflow run id, so a retry after a lost answer
  does not duplicate it.
* **Clean failure.** When retries run out, the step undoes what it did (puts moved aliases
  back, deletes the version it created, marks its run FAILED; each best effort, since the
  server may still be down) and raises RegistryError naming the step that failed.
* **Idempotent per attempt.** A KFP retry of the register step shares the pipeline run's
  MLflow run with the attempt before it. Each attempt tags the version it creates with its
  own token (`kdflow.register_attempt`); a retry that finds an earlier attempt's version of
  the same run adopts it (waits for it, sets the aliases it lacks) instead of creating
  another, and a failed attempt deletes only a version carrying its own token, never one
  an earlier attempt registered or that holds an alias.
* **Concurrent promotion.** `champion` moves under a promotion lock (`kdflow.mlflow.lock`),
  and only to a version at least as good as the champion of the moment.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import kdflow
from kdflow.errors import RegistryError
from kdflow.mlflow.client import (
    ACCURACY_TAG,
    ATTEMPT_TAG,
    CLEANUP,
    DATASET_TAG,
    EXISTS,
    GATES_PASSED_TAG,
    METRICS_TAG,
    ONNX_URI_TAG,
    PROMOTION_TAG,
    RUN_TAG,
    RetryPolicy,
    call,
    ensure_experiment,
    error_code,
    find_or_create_run,
    http_settings,
    metric_safe,
    mlflow_client,
    short_error,
)
from kdflow.mlflow.logged_models import log_models
from kdflow.mlflow.promotion import auto_promote, restore_alias
from kdflow.mlflow.versions import CHALLENGER, CHAMPION, alias_target

log = logging.getLogger(__name__)


@dataclass
class _Undo:
    """What a failed registration has to put back."""

    attempt: str = ""
    """This attempt's token, on the version it creates: the only version it may delete."""
    version: str | None = None
    """The version this attempt created (None for one an earlier attempt registered)."""
    aliases: dict[str, str | None] = field(default_factory=dict)  # alias -> version before


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
    client = mlflow_client(tracking_uri)
    undo = _Undo(attempt=uuid.uuid4().hex)
    run_id: str | None = None
    with http_settings.applied(policy):
        try:
            experiment_id = call(policy, "find or create the experiment", ensure_experiment,
                                 tracking_uri)
            run_id = call(policy, "find or create the MLflow run", _pipeline_run, client,
                          experiment_id, tags)
            _log_summary(client, policy, run_id, summary)
            pyfunc_id, onnx_id = log_models(
                client, policy, experiment_id, run_id, student_dir, onnx_path, tags
            )
            version_tags = {
                **tags,
                # What concurrent promotion compares: accuracy, and the data it was measured on.
                ACCURACY_TAG: repr(float(summary["student"]["accuracy"])),
                DATASET_TAG: summary["dataset"]["sha256"],
                METRICS_TAG: json.dumps(_headline(summary), sort_keys=True),
                GATES_PASSED_TAG: str(bool(summary.get("passed"))).lower(),
                PROMOTION_TAG: "auto" if promote else "manual",
                ATTEMPT_TAG: undo.attempt,
            }
            if onnx_id:
                version_tags[ONNX_URI_TAG] = f"models:/{onnx_id}"
            version = _create_version(client, policy, model_name, pyfunc_id, run_id,
                                      version_tags, undo)
            undo.aliases = {CHALLENGER: alias_target(client, policy, model_name, CHALLENGER)}
            call(policy, f"set {model_name}@{CHALLENGER}", client.set_registered_model_alias,
                 model_name, CHALLENGER, version)
            aliases = [CHALLENGER]
            promotion = {"promoted": False, "detail": "promotion policy is manual"}
            if promote and summary["dataset"].get("passed") is False:
                # Data that passed only under --validation warn: never champion unseen.
                promotion = {"promoted": False, "detail": "the data passed validation only "
                             "under --validation warn; promote it by hand (kdflow promote "
                             f"{model_name} {version}) once its findings are understood"}
            elif promote:
                promotion = auto_promote(
                    client, policy, model_name, version, summary, undo.aliases
                )
                if promotion["promoted"]:
                    aliases.append(CHAMPION)
        except Exception as exc:
            _abandon(client, model_name, run_id, undo)
            if isinstance(exc, RegistryError):
                raise
            raise RegistryError(
                f"registering {model_name} in {tracking_uri} failed: {short_error(exc)}"
            ) from exc
        # Registered and aliased: the rest is bookkeeping and must not undo the version.
        try:
            call(CLEANUP, "mark the run finished", client.set_terminated, run_id, "FINISHED")
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
    if not tags.get(RUN_TAG):
        return str(client.create_run(experiment_id, tags=tags).info.run_id)
    from mlflow.entities import RunTag

    run_id = find_or_create_run(client, experiment_id, tags[RUN_TAG])
    client.update_run(run_id, status="RUNNING")
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    return run_id


def _log_summary(client: Any, policy: RetryPolicy, run_id: str, summary: dict[str, Any]) -> None:
    """The run's metrics and its summary.json, before the models."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in summary_metrics(summary).items()]
    call(policy, "log the metrics", client.log_batch, run_id, metrics=metrics)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "summary.json"
        path.write_text(json.dumps(summary, indent=2))
        call(policy, "upload summary.json", client.log_artifact, run_id, str(path))


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of an evaluation summary, named for MLflow."""
    metrics: dict[str, float] = {}
    student = summary["student"]
    for key in (
        "accuracy", "macro_f1", "ece", "nll", "agreement", "params", "file_bytes", "flops",
        "latency_ms", "latency_p95_ms", "throughput_per_s", "latency_text_ms", "latency_image_ms",
        "throughput_image_per_s", "perplexity", "token_accuracy", "tokens_per_s",
    ):
        if student.get(key) is not None:
            metrics[f"student_{key}"] = float(student[key])
    for key, value in (student.get("onnx") or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics[f"onnx_{key}"] = float(value)
    for name, acc in (student.get("per_class_accuracy") or {}).items():
        metrics[f"student_class_accuracy/{metric_safe(name)}"] = float(acc)
    for role in ("baseline", "ensemble"):
        for key in ("accuracy", "macro_f1", "ece", "nll", "latency_ms", "perplexity",
                    "token_accuracy", "agreement"):
            if summary[role].get(key) is not None:
                metrics[f"{role}_{key}"] = float(summary[role][key])
    for i, teacher in enumerate(summary.get("teachers", [])):
        for key in ("accuracy", "latency_ms", "params", "perplexity", "tokens_per_s"):
            if teacher.get(key) is not None:
                metrics[f"teacher{i}_{key}"] = float(teacher[key])
    if summary.get("champion"):
        metrics["champion_accuracy"] = float(summary["champion"]["accuracy"])
        if summary["champion"].get("perplexity") is not None:
            metrics["champion_perplexity"] = float(summary["champion"]["perplexity"])
    for name, gate in (summary.get("gates") or {}).items():
        if gate.get("value") is not None:
            metrics[f"gate_{name}"] = float(gate["value"])
    for run in (summary.get("seeds") or {}).get("runs") or []:  # --seeds: every seed's
        for key in ("student", "baseline", "gain", "val_accuracy"):
            if run.get(key) is not None:
                metrics[f"seed{run['seed']}_{key}"] = float(run[key])
    cost = summary.get("cost") or {}
    for part, figures in cost.items():  # cost_total_core_s, cost_break_even_requests_onnx...
        if not isinstance(figures, dict) or part == "inference":
            continue
        for key, value in figures.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics[f"cost_{part}_{key}"] = float(value)
    for key, value in ((cost.get("inference") or {}).get("saving_ms") or {}).items():
        if value is not None:
            metrics[f"cost_saving_ms_{key}"] = float(value)
    return metrics


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The few numbers `kdflow models list` shows, kept in one version tag."""
    student = summary["student"]
    onnx = student.get("onnx") or {}
    return {
        key: value
        for key, value in {
            "accuracy": student.get("accuracy"),
            "perplexity": student.get("perplexity"),
            "macro_f1": student.get("macro_f1"),
            "ece": student.get("ece"),
            "latency_ms": student.get("latency_ms"),
            "onnx_latency_ms": onnx.get("latency_ms"),
            "params": student.get("params"),
            "file_bytes": student.get("file_bytes"),
        }.items()
        if value is not None
    }


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
        call(policy, f"create registered model {model_name}", client.create_registered_model,
             model_name, description="Students distilled by kdflow.")
    except MlflowException as exc:
        if error_code(exc) not in EXISTS:
            raise

    def find_or_create() -> Any:
        found = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
        if found:  # this attempt's, its answer lost, or an earlier attempt's: adopt it
            return min(found, key=lambda v: int(v.version))
        return client.create_model_version(
            model_name, f"models:/{model_id}", run_id=run_id, tags=tags,
            await_creation_for=0, model_id=model_id,
        )

    created = call(policy, f"create a version of {model_name}", find_or_create)
    if (created.tags or {}).get(ATTEMPT_TAG) == undo.attempt:
        undo.version = str(created.version)
    else:
        log.info("%s version %s was registered by an earlier attempt of this run: adopting it",
                 model_name, created.version)
    call(policy, f"wait for {model_name} version {created.version}", _wait_ready, client,
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


def _abandon(client: Any, model_name: str, run_id: str | None, undo: _Undo) -> None:
    """Undo a failed registration as far as the server lets us (it may still be down)."""
    for alias, previous in (undo.aliases or {}).items():
        # Under the promotion lock, and only while the alias still points at our version:
        # a writer that moved it on since keeps its move.
        try:
            restore_alias(client, replace(CLEANUP, lock_wait_s=30.0), model_name, alias,
                          undo.version, previous)
        except Exception as exc:  # the server may be down: say what is left
            log.error("could not put %s@%s back to %s after the failure (%s); check it with "
                      "`kdflow models list %s`", model_name, alias,
                      "nothing" if previous is None else f"v{previous}", short_error(exc),
                      model_name)
    if undo.version is None and run_id is not None:
        # This attempt's create may have landed with its answer lost: find the version by
        # its run and this attempt's token (a version of an earlier attempt is not ours).
        with contextlib.suppress(Exception):
            found = call(CLEANUP, "look for a half-registered version",
                         client.search_model_versions,
                         f"name='{model_name}' and run_id='{run_id}'")
            ours = [v for v in found if (v.tags or {}).get(ATTEMPT_TAG) == undo.attempt]
            undo.version = str(ours[0].version) if ours else None
    if undo.version is not None and _holds_an_alias(client, model_name, undo.version):
        log.error("%s version %s holds an alias: not deleting it; check its aliases",
                  model_name, undo.version)
        undo.version = None
    if undo.version is not None:
        try:
            call(CLEANUP, "delete the half-registered version", client.delete_model_version,
                 model_name, undo.version)
            log.warning("deleted %s version %s: its registration failed", model_name,
                        undo.version)
        except Exception as exc:  # best effort; the version's files are complete
            log.error(
                "could not delete %s version %s after the failure (%s); its artifacts are "
                "complete but it has no alias: delete it or promote it by hand",
                model_name, undo.version, short_error(exc),
            )
    if run_id is not None:
        with contextlib.suppress(Exception):
            call(CLEANUP, "mark the run failed", client.set_terminated, run_id, "FAILED")


def _holds_an_alias(client: Any, model_name: str, version: str) -> bool:
    """Whether an alias points at `version` (unknown: treated as yes, so nothing is lost)."""
    try:
        aliases = call(CLEANUP, "read the aliases", client.get_registered_model, model_name).aliases
    except Exception:
        return True
    return version in {str(v) for v in (aliases or {}).values()}


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

