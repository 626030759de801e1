"""The MLflow client: bounded retries, MLflow's HTTP settings, the store, the run lookup."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from kdflow.errors import RegistryError
from kdflow.mlflow.client import (
    IncompleteUpload,
    RetryPolicy,
    call,
    ensure_experiment,
    find_or_create_run,
    http_settings,
    mlflow_client,
    resolve_tracking_uri,
)


def failing(*answers: object) -> tuple[list[int], object]:
    """A function that raises or returns `answers` in turn, and the list of its calls."""
    calls: list[int] = []
    queue = list(answers)

    def fn() -> object:
        calls.append(1)
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return calls, fn


# ------------------------------------------------------------------------------ retries


def test_backoff_doubles_from_the_first_delay_up_to_the_cap(monkeypatch):
    monkeypatch.setattr(random, "uniform", lambda a, b: 1.0)
    policy = RetryPolicy(attempts=6, first_delay_s=2.0, max_delay_s=10.0)
    assert list(policy.delays()) == [2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_jitter_stays_within_a_quarter():
    delays = list(RetryPolicy(attempts=50, first_delay_s=4.0, max_delay_s=4.0).delays())
    assert all(3.0 <= d <= 5.0 for d in delays) and len(set(delays)) > 1


def test_transient_failures_are_retried_until_they_succeed(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    calls, flaky = failing(requests.ConnectionError("refused"), MlflowException("boom"), "ok")
    assert call(RetryPolicy(attempts=3, first_delay_s=1.0), "do it", flaky) == "ok"
    assert len(calls) == 3 and len(slept) == 2


def test_a_refusal_is_not_retried():
    calls, refused = failing(
        MlflowException("no such model", error_code=RESOURCE_DOES_NOT_EXIST)
    )
    with pytest.raises(MlflowException, match="no such model"):
        call(RetryPolicy(attempts=3, first_delay_s=0.0), "read it", refused)
    assert len(calls) == 1


def test_an_outage_longer_than_the_policy_is_a_registry_error_naming_the_step(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: None)
    _, down = failing(
        MlflowException("API request to http://mlflow:5000 failed: Connection refused")
    )
    with pytest.raises(RegistryError) as caught:
        call(RetryPolicy(attempts=4, max_delay_s=8), "set m@champion", down)
    assert str(caught.value) == (
        "could not set m@champion in 4 attempts (backoff up to 8 s): API request to "
        "http://mlflow:5000 failed: Connection refused. Check that the MLflow tracking server "
        "and its artifact store are up, then run the step again"
    )


def test_an_incomplete_upload_is_uploaded_again(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: None)
    calls, upload = failing(IncompleteUpload("short file"), "model-id")
    assert call(RetryPolicy(attempts=3), "upload the model", upload) == "model-id"
    assert len(calls) == 2


@pytest.mark.parametrize("error", [RegistryError("refused"), ValueError("a bug")])
def test_other_errors_are_raised_at_once(error):
    calls, broken = failing(error)
    with pytest.raises(type(error), match=str(error)):
        call(RetryPolicy(attempts=3, first_delay_s=0.0), "do it", broken)
    assert len(calls) == 1


def test_mlflow_http_retries_are_turned_down_only_while_kdflow_calls_and_only_if_unset(
    monkeypatch,
):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    with http_settings.applied(RetryPolicy(http_retries=1, http_timeout_s=60)):
        with http_settings.applied(RetryPolicy(http_retries=5)):  # nested: unchanged
            assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"  # the user's setting wins
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


# -------------------------------------------------------------------------- the store


def test_the_tracking_uri_is_the_given_one_else_the_environment_else_a_local_store(
    monkeypatch, tmp_path: Path
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_tracking_uri("http://other:5000") == "http://other:5000"
    assert resolve_tracking_uri(None) == "http://mlflow:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/.kdflow/mlflow.db"
    assert (tmp_path / ".kdflow").is_dir()


def test_a_run_id_with_quotes_finds_its_own_run(tmp_path: Path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, experiment = mlflow_client(store), ensure_experiment(store)
    first = find_or_create_run(client, experiment, "it's")
    other = find_or_create_run(client, experiment, "it")
    assert first != other
    assert find_or_create_run(client, experiment, "it's") == first
    assert client.get_run(first).info.run_name == "it's"


def test_a_tracking_uri_from_the_environment_must_have_a_scheme_too(monkeypatch) -> None:
    import pytest as _pytest

    from kdflow.errors import ConfigError
    from kdflow.mlflow.client import resolve_tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "mlruns")
    with _pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI: 'mlruns' has no scheme"):
        resolve_tracking_uri(None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.kdflow:5000")
    assert resolve_tracking_uri(None) == "http://mlflow.kdflow:5000"
    assert resolve_tracking_uri("databricks") == "databricks"
