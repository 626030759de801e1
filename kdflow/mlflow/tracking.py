"""One MLflow run per pipeline run: the steps add to it as they finish.

The run is found by its `kdflow.run_id` tag (the KFP pipeline run's id) and created by the
first step that records something, so a run whose data failed validation or whose gates
failed still leaves its record in MLflow: the validation result, the dataset hash and the
report. The register step logs the student into the same run.

Recording is best effort before registration: a tracking server that is down when the data
is validated costs a warning, not the pipeline run (registration, which needs the server,
retries and fails cleanly on its own).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdflow.mlflow.client import (
    DATA_TAG,
    DATASET_TAG,
    SCAN_TAG,
    VALIDATION_TAG,
    RetryPolicy,
    ensure_experiment,
    find_or_create_run,
    http_settings,
    metric_safe,
    mlflow_client,
    resolve_tracking_uri,
    short_error,
)

log = logging.getLogger(__name__)

# No retries and a short timeout: a record that cannot be made costs a warning, not minutes.
RECORD_HTTP_RETRIES = 0
RECORD_HTTP_TIMEOUT_S = 10


def record_validation(
    tracking_uri: str | None,
    run_id: str,
    data: str,
    info: dict[str, Any],
    report_path: Path | None = None,
) -> str | None:
    """Record the validate step's result on the pipeline run's MLflow run.

    `info` is what `kdflow.steps.validate_data` returns (or, for data that failed,
    `{"passed": False, "validation": report.to_dict()}`). Logs the dataset as
    a run input (source URI and SHA-256 digest), tags the hash and the verdict, the checks as
    metrics, and the Markdown report and JSON result as artifacts. Returns the MLflow run id,
    or None when the tracking server could not be reached (with a warning).
    """
    def record(client: Any, mlflow_run: str) -> None:
        _record(client, mlflow_run, data, info, report_path)

    return _best_effort(tracking_uri, run_id, "the validation", record)


def _best_effort(tracking_uri: str | None, run_id: str, what: str,
                 record: Callable[[Any, str], None]) -> str | None:
    """Find or open pipeline run `run_id`'s MLflow run and `record(client, mlflow_run)` on it,
    with no HTTP retries and a short timeout; a failure is a warning and None."""
    uri = resolve_tracking_uri(tracking_uri)
    try:
        with http_settings.applied(_record_policy()):
            client = mlflow_client(uri)
            mlflow_run = find_or_create_run(client, ensure_experiment(uri), run_id)
            record(client, mlflow_run)
    except Exception as exc:  # the record is best effort here; registration retries
        log.warning("could not record %s in MLflow at %s: %s", what, uri,
                    short_error(exc) or type(exc).__name__)
        return None
    log.info("recorded %s on MLflow run %s", what, mlflow_run)
    return mlflow_run


def _record_policy() -> RetryPolicy:
    return RetryPolicy(attempts=1, http_retries=RECORD_HTTP_RETRIES,
                       http_timeout_s=RECORD_HTTP_TIMEOUT_S)


def _record(client: Any, mlflow_run: str, data: str, info: dict[str, Any],
            report_path: Path | None) -> None:
    from mlflow.entities import RunTag

    validation = info.get("validation") or {}
    # The prepared dataset's hash (what the registry compares) exists once the data passed
    # or was let through; the scan's content hash exists for every readable file.
    sha = info.get("sha256") or ""
    tags = {VALIDATION_TAG: str(bool(info.get("passed"))).lower(), DATA_TAG: data}
    if sha:
        tags[DATASET_TAG] = sha
    if validation.get("dataset_hash"):
        tags[SCAN_TAG] = validation["dataset_hash"]
    client.log_batch(mlflow_run, metrics=_metrics(info),
                     tags=[RunTag(key, value) for key, value in tags.items()])
    _log_dataset(client, mlflow_run, data, sha or validation.get("dataset_hash", ""))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "validation"
        folder.mkdir()
        (folder / "result.json").write_text(json.dumps(info, indent=2, default=str))
        if report_path is not None and report_path.exists():
            (folder / "report.md").write_text(report_path.read_text())
        client.log_artifacts(mlflow_run, str(folder), "validation")


def _metrics(info: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    validation = info.get("validation") or {}
    values: dict[str, float] = {"validation_passed": float(bool(info.get("passed")))}
    for key in ("failures", "warnings"):
        values[f"validation_{key}"] = float(len(validation.get(key) or []))
    for split, rows in (validation.get("rows") or {}).items():
        values[f"validation_rows_{split}"] = float(rows)
    return [Metric(key, value, now, 0) for key, value in values.items()]


def _log_dataset(client: Any, mlflow_run: str, data: str, sha: str) -> None:
    """The data as an MLflow dataset input: its source URI and its SHA-256 as the digest."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            source = resolve_dataset_source(data)
        except Exception:  # builtin:NAME and other URIs MLflow has no resolver for
            source = CodeDatasetSource(tags={"uri": data})
        # MetaDataset declares `profile` abstract but works without it (MLflow 3.17).
        dataset = MetaDataset(  # type: ignore[abstract]
            source, name=Path(data).name or data, digest=sha[:36] or None
        )
    context = InputTag(key="mlflow.data.context", value="training")
    client.log_inputs(mlflow_run, [DatasetInput(dataset._to_mlflow_entity(), [context])])


def record_training(
    tracking_uri: str | None,
    run_id: str,
    result: dict[str, Any],
    prefix: str = "",
) -> str | None:
    """Log the distill step's per-epoch curves on the pipeline run's MLflow run, each name
    after `prefix` (one seed's of several: `seed1/`).

    `result` is what `kdflow.distill.run.distill` returns: each role's `history` (one dict per
    epoch) becomes metrics `<role>/<name>` at step = epoch (losses, validation accuracy,
    rows/s), beside the teachers' ensemble weights and agreement. Best effort, as
    `record_validation`.
    """
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = []
    for role in ("student", "baseline"):
        for epoch in (result.get(role) or {}).get("history") or []:
            step = int(epoch.get("epoch", 0))
            metrics += [
                Metric(metric_safe(f"{prefix}{role}/{key}"), float(value), now, step)
                for key, value in epoch.items()
                if key != "epoch" and isinstance(value, int | float) and math.isfinite(value)
            ]
    for i, teacher in enumerate(result.get("teachers") or []):
        for key in ("weight", "agreement", "val_accuracy"):
            if isinstance(teacher.get(key), int | float):
                metrics.append(Metric(metric_safe(f"{prefix}teacher{i}/{key}"),
                                      float(teacher[key]), now, 0))

    def record(client: Any, mlflow_run: str) -> None:
        for start in range(0, len(metrics), 1000):  # MLflow's log_batch limit
            client.log_batch(mlflow_run, metrics=metrics[start : start + 1000])

    return _best_effort(tracking_uri, run_id, "the training curves", record)
