"""The pipeline run's MLflow run records the validation, passed or failed (local sqlite store)."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from kdflow.config import DataConfig
from kdflow.errors import DataValidationError
from kdflow.mlflow.client import RUN_TAG
from kdflow.mlflow.tracking import record_training, record_validation
from kdflow.steps import validate_data


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def runs_of(uri: str, run_id: str) -> list:
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=f"tags.`{RUN_TAG}` = '{run_id}'")


def test_a_passed_validation_is_recorded_with_the_dataset_hash(tmp_path: Path, store: str):
    info = validate_data(DataConfig(data="builtin:digits"), 0, tmp_path / "dataset",
                         tmp_path / "report.md", tracking_uri=store, run_id="run-1")
    client = MlflowClient(store)
    run = client.get_run(info["mlflow_run_id"])
    assert run.info.run_name == "run-1"
    assert run.data.tags[RUN_TAG] == "run-1"
    assert run.data.tags["kdflow.dataset_sha256"] == info["sha256"]
    assert run.data.tags["kdflow.validation_passed"] == "true"
    assert run.data.tags["kdflow.data"] == "builtin:digits"
    assert run.data.metrics["validation_passed"] == 1.0
    assert run.data.metrics["validation_failures"] == 0.0
    assert run.data.metrics["validation_rows_train"] == 1797.0
    saved = {a.path for a in client.list_artifacts(run.info.run_id, "validation")}
    assert saved == {"validation/report.md", "validation/result.json"}
    result = json.loads(Path(client.download_artifacts(
        run.info.run_id, "validation/result.json", str(tmp_path))).read_text())
    assert result["sha256"] == info["sha256"] and result["passed"] is True
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.digest == info["sha256"][:36]
    assert json.loads(dataset.dataset.source) == {"tags": {"uri": "builtin:digits"}}
    # The same pipeline run id finds the same MLflow run: steps add to one record.
    assert record_validation(store, "run-1", "builtin:digits", info) == run.info.run_id
    assert len(runs_of(store, "run-1")) == 1


def test_a_failed_validation_is_recorded_before_the_step_stops(tmp_path: Path, store: str):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(60, 3)), columns=["f0", "f1", "f2"])
    frame["label"] = [i % 3 for i in range(60)]
    frame.loc[5, "f1"] = np.nan
    path = tmp_path / "train.parquet"
    frame.to_parquet(path)
    with pytest.raises(DataValidationError, match="f1"):
        validate_data(DataConfig(data=str(path)), 0, tmp_path / "dataset",
                      tmp_path / "report.md", tracking_uri=store, run_id="run-bad")
    (run,) = runs_of(store, "run-bad")
    assert run.data.tags["kdflow.validation_passed"] == "false"
    assert "kdflow.dataset_sha256" not in run.data.tags  # nothing was prepared
    assert len(run.data.tags["kdflow.validation_content_sha256"]) == 64
    assert run.data.metrics["validation_failures"] >= 1
    report = MlflowClient(store).download_artifacts(run.info.run_id, "validation/report.md",
                                                    str(tmp_path))
    assert "FAILED" in Path(report).read_text()
    (dataset,) = run.inputs.dataset_inputs
    assert json.loads(dataset.dataset.source) == {"uri": str(path)}
    assert not (tmp_path / "dataset").exists()  # the step stopped before writing data


def test_an_unreachable_tracking_server_costs_a_warning_not_the_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with caplog.at_level(logging.WARNING, logger="kdflow.mlflow.tracking"):
        info = validate_data(DataConfig(data="builtin:digits"), 0, tmp_path / "dataset",
                             tmp_path / "report.md",
                             tracking_uri=f"http://127.0.0.1:{port}", run_id="run-2")
    assert info["passed"] and info["mlflow_run_id"] is None
    assert (tmp_path / "dataset").exists()
    (record,) = caplog.records
    assert record.getMessage().startswith(
        f"could not record the validation in MLflow at http://127.0.0.1:{port}:")


def test_without_a_run_id_nothing_is_recorded(tmp_path: Path, store: str):
    info = validate_data(DataConfig(data="builtin:digits"), 0, tmp_path / "dataset",
                         tmp_path / "report.md", tracking_uri=store)
    assert "mlflow_run_id" not in info
    assert not (tmp_path / "mlflow.db").exists()


def test_training_curves_are_logged_per_epoch_on_the_same_run(tmp_path: Path, store: str):
    opened = record_validation(store, "run-3", "builtin:digits", {"passed": True})
    result = {
        "student": {"history": [{"epoch": e, "loss": 1.0 / e, "val_accuracy": 0.5 + e / 10,
                                 "note": "text is skipped", "bad": float("nan")}
                                for e in (1, 2, 3)]},
        "baseline": {"history": [{"epoch": 1, "loss": 2.0}]},
        "teachers": [{"spec": "cnn:channels=8", "weight": 0.25, "agreement": 0.9}],
    }
    assert record_training(store, "run-3", result) == opened
    client = MlflowClient(store)
    curve = client.get_metric_history(opened, "student/val_accuracy")
    assert [(m.step, round(m.value, 6)) for m in curve] == [(1, 0.6), (2, 0.7), (3, 0.8)]
    assert [m.step for m in client.get_metric_history(opened, "baseline/loss")] == [1]
    assert client.get_run(opened).data.metrics["teacher0/agreement"] == 0.9
    assert "student/bad" not in client.get_run(opened).data.metrics
