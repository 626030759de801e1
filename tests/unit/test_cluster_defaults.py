"""What a step in a Kubeflow pod takes from the cluster (the kdflow-config ConfigMap's
MLFLOW_TRACKING_URI and KDFLOW_STORAGE_PATH), and what it refuses: a tracking store inside
the pod, which would die with it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kdflow.config import DistillConfig
from kdflow.distill.run import with_shared_storage
from kdflow.errors import ConfigError
from kdflow.mlflow.client import resolve_tracking_uri

POD = "kdflow-distillation-x7-distill"


@pytest.fixture
def in_a_pod(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KFP_POD_NAME", POD)
    for name in ("MLFLOW_TRACKING_URI", "KDFLOW_STORAGE_PATH"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_pod_without_a_tracking_uri_is_refused_and_no_store_is_made(in_a_pod, tmp_path):
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI in the kdflow-config ConfigMap"):
        resolve_tracking_uri(None)
    assert not (tmp_path / ".kdflow").exists()


@pytest.mark.parametrize("uri", ["sqlite:///tmp/mlflow.db", "file:///tmp/mlruns"])
def test_a_pod_refuses_a_store_inside_itself(in_a_pod, uri):
    with pytest.raises(ConfigError, match="is a file inside this pod, lost with it"):
        resolve_tracking_uri(uri)
    in_a_pod.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ConfigError, match="^MLFLOW_TRACKING_URI: "):
        resolve_tracking_uri(None)


def test_a_pod_takes_the_tracking_server_from_the_config_map(in_a_pod):
    in_a_pod.setenv("MLFLOW_TRACKING_URI", "http://mlflow.kdflow.svc:5000")
    assert resolve_tracking_uri(None) == "http://mlflow.kdflow.svc:5000"
    assert resolve_tracking_uri("https://mlflow.example") == "https://mlflow.example"


def test_outside_a_pipeline_pod_the_local_store_is_the_default(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ("KFP_POD_NAME", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # a notebook pod: not a step
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path / '.kdflow' / 'mlflow.db'}"


def test_checkpoints_go_to_the_clusters_shared_storage(in_a_pod, caplog):
    in_a_pod.setenv("KDFLOW_STORAGE_PATH", "s3://kdflow/runs")
    assert with_shared_storage(DistillConfig()).storage_path == "s3://kdflow/runs"
    given = DistillConfig(storage_path="s3://mine/ckpt")
    assert with_shared_storage(given) is given  # --storage-path wins


def test_a_pod_without_shared_storage_says_a_retry_begins_again(in_a_pod, caplog):
    with caplog.at_level(logging.WARNING, logger="kdflow.distill.run"):
        assert with_shared_storage(DistillConfig()).storage_path is None
    assert "a retry of this step will begin again" in caplog.text
    assert "KDFLOW_STORAGE_PATH in the kdflow-config ConfigMap" in caplog.text
