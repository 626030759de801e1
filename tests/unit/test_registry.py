"""Registry logic on a local sqlite store: retries, the promotion rules, the lock, rollback.

Real MLflow, no server: versions are created directly (no artifacts), which is all the
alias logic reads. Registration end to end, against servers, is in tests/integration.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from kdflow.errors import RegistryError
from kdflow.mlflow import registry
from kdflow.mlflow.registry import RetryPolicy, _Undo

QUICK = RetryPolicy(attempts=3, first_delay_s=0.0, lock_ttl_s=60.0, lock_wait_s=0.5)
DATA = "a" * 64


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    registry._client(uri).search_registered_models()  # creates the schema once
    return uri


@pytest.fixture
def model(store) -> tuple[object, str]:
    client = registry._client(store)
    name = f"m-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    return client, name


def add_version(client, name: str, accuracy: float, dataset: str = DATA) -> str:
    version = client.create_model_version(
        name, "file:///nowhere", tags={registry.ACCURACY_TAG: repr(accuracy),
                                       registry.DATASET_TAG: dataset},
    )
    return str(version.version)


def champion(client, name: str) -> str | None:
    return registry._alias_target(client, QUICK, name, registry.CHAMPION)


def auto_promote(client, name, version, accuracy, seen=None, dataset=DATA):
    summary = {"champion_seen": seen, "student": {"accuracy": accuracy},
               "dataset": {"sha256": dataset}}
    return registry._auto_promote(client, QUICK, name, version, summary, "run", _Undo())


# ------------------------------------------------------------------------------ retries


def test_backoff_doubles_from_the_first_delay_up_to_the_cap(monkeypatch):
    monkeypatch.setattr(registry.random, "uniform", lambda a, b: 1.0)
    policy = RetryPolicy(attempts=6, first_delay_s=2.0, max_delay_s=10.0)
    assert list(policy.delays()) == [2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_jitter_stays_within_a_quarter():
    delays = list(RetryPolicy(attempts=50, first_delay_s=4.0, max_delay_s=4.0).delays())
    assert all(3.0 <= d <= 5.0 for d in delays) and len(set(delays)) > 1


def test_transient_failures_are_retried_until_they_succeed(monkeypatch):
    slept = []
    monkeypatch.setattr(registry.time, "sleep", slept.append)
    answers = [requests.ConnectionError("refused"), MlflowException("boom"), "ok"]

    def flaky():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    policy = RetryPolicy(attempts=3, first_delay_s=1.0)
    assert registry._call(policy, "do it", flaky) == "ok"
    assert len(slept) == 2


def test_a_refusal_is_not_retried():
    calls = []

    def refused():
        calls.append(1)
        raise MlflowException("no such model", error_code=RESOURCE_DOES_NOT_EXIST)

    with pytest.raises(MlflowException, match="no such model"):
        registry._call(QUICK, "read it", refused)
    assert len(calls) == 1


def test_an_outage_longer_than_the_policy_is_a_registry_error_naming_the_step(monkeypatch):
    monkeypatch.setattr(registry.time, "sleep", lambda s: None)

    def down():
        raise MlflowException("API request to http://mlflow:5000 failed: Connection refused")

    with pytest.raises(RegistryError) as caught:
        registry._call(RetryPolicy(attempts=4, max_delay_s=8), "set m@champion", down)
    assert str(caught.value) == (
        "could not set m@champion in 4 attempts (backoff up to 8 s): API request to "
        "http://mlflow:5000 failed: Connection refused. Check that the MLflow tracking server "
        "and its artifact store are up, then run the step again"
    )


def test_an_incomplete_upload_counts_as_transient():
    assert registry._transient(registry.IncompleteUpload("short file"))
    assert not registry._transient(RegistryError("refused"))
    assert not registry._transient(ValueError("a bug"))


def test_mlflow_http_retries_are_turned_down_only_while_kdflow_calls_and_only_if_unset(
    monkeypatch,
):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    with registry._http.applied(RetryPolicy(http_retries=1, http_timeout_s=60)):
        with registry._http.applied(RetryPolicy(http_retries=5)):  # nested: unchanged
            assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"  # the user's setting wins
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


# ------------------------------------------------------------------------------ metrics


def test_summary_metrics_name_every_number_for_mlflow():
    summary = {
        "student": {"accuracy": 0.9, "ece": 0.02, "params": 1210, "per_class_accuracy":
                    {"setosa": 1.0, "versi/color (x)": 0.8},
                    "onnx": {"latency_ms": 0.04, "parity": {"rows": 3}}},
        "baseline": {"accuracy": 0.8},
        "ensemble": {"accuracy": 0.95},
        "teachers": [{"accuracy": 0.96, "params": 9610}],
        "champion": None,
        "gates": {"retention": {"value": 0.94}, "no_regression_vs_champion": {"value": None}},
    }
    assert registry.summary_metrics(summary) == {
        "student_accuracy": 0.9,
        "student_ece": 0.02,
        "student_params": 1210.0,
        "onnx_latency_ms": 0.04,
        "student_class_accuracy/setosa": 1.0,
        "student_class_accuracy/versi/color _x_": 0.8,
        "baseline_accuracy": 0.8,
        "ensemble_accuracy": 0.95,
        "teacher0_accuracy": 0.96,
        "teacher0_params": 9610.0,
        "gate_retention": 0.94,
    }


# ---------------------------------------------------------------------------- promotion


def test_the_first_version_becomes_champion(model):
    client, name = model
    v1 = add_version(client, name, 0.9)
    assert auto_promote(client, name, v1, 0.9) == {"promoted": True, "detail": "first champion"}
    assert champion(client, name) == v1


def test_a_version_gated_against_the_current_champion_replaces_it(model):
    client, name = model
    v1, v2 = add_version(client, name, 0.95), add_version(client, name, 0.945)
    auto_promote(client, name, v1, 0.95)
    # v2 is a bit worse but within the regression margin its gates allowed: it replaces v1.
    assert auto_promote(client, name, v2, 0.945, seen=int(v1))["detail"] == f"replaces v{v1}"
    assert champion(client, name) == v2
    assert client.get_model_version(name, v2).tags[registry.PREVIOUS_TAG] == v1
    tags = client.get_registered_model(name).tags
    assert json.loads(tags[registry.HISTORY_TAG]) == [int(v1), int(v2)]


def test_a_run_does_not_replace_a_better_champion_that_appeared_during_it(model):
    client, name = model
    v1, v2, v3 = (add_version(client, name, a) for a in (0.80, 0.95, 0.90))
    auto_promote(client, name, v1, 0.80)
    auto_promote(client, name, v2, 0.95, seen=int(v1))  # the other run, first to finish
    result = auto_promote(client, name, v3, 0.90, seen=int(v1))
    assert not result["promoted"]
    assert result["detail"] == (
        f"champion moved to v{v2} during this run and is at least as accurate (0.9500 vs 0.9000)"
    )
    assert champion(client, name) == v2


def test_a_run_replaces_a_worse_champion_that_appeared_during_it(model):
    client, name = model
    v1, v2, v3 = (add_version(client, name, a) for a in (0.80, 0.90, 0.95))
    auto_promote(client, name, v1, 0.80)
    auto_promote(client, name, v2, 0.90, seen=int(v1))
    assert auto_promote(client, name, v3, 0.95, seen=int(v1))["promoted"]
    assert champion(client, name) == v3


def test_a_champion_tested_on_other_data_is_left_for_a_person_to_judge(model):
    client, name = model
    v1, v2 = add_version(client, name, 0.80, dataset="b" * 64), add_version(client, name, 0.99)
    auto_promote(client, name, v1, 0.80, dataset="b" * 64)
    result = auto_promote(client, name, v2, 0.99, seen=None)
    assert not result["promoted"]
    assert f"run `kdflow promote {name} {v2}` if this one is better" in result["detail"]
    assert champion(client, name) == v1


# --------------------------------------------------------------------------------- lock


def test_the_promotion_lock_is_released_after_use(model):
    client, name = model
    with registry.promotion_lock(client, name, QUICK):
        assert client.get_registered_model(name + registry.LOCK_SUFFIX)
    with pytest.raises(MlflowException, match="not found"):
        client.get_registered_model(name + registry.LOCK_SUFFIX)


def test_a_held_lock_makes_a_second_writer_wait_then_fail_with_the_holder(model):
    client, name = model
    with registry.promotion_lock(client, name, QUICK) as owner:
        started = time.monotonic()
        with pytest.raises(RegistryError) as caught:
            with registry.promotion_lock(client, name, QUICK):
                pass
        assert time.monotonic() - started >= QUICK.lock_wait_s
    message = str(caught.value)
    assert message.startswith(f"promotion lock '{name}.kdflow-lock' is held by {owner}")
    assert message.endswith(f"delete the registered model '{name}.kdflow-lock' and retry")


def test_a_lock_left_by_a_dead_process_is_broken_after_it_expires(model):
    client, name = model
    client.create_registered_model(
        name + registry.LOCK_SUFFIX,
        tags={"kdflow.lock_owner": "gone:1:x", "kdflow.lock_expires": f"{time.time() - 1:.3f}"},
    )
    with registry.promotion_lock(client, name, QUICK) as owner:
        holder = client.get_registered_model(name + registry.LOCK_SUFFIX).tags
        assert holder["kdflow.lock_owner"] == owner != "gone:1:x"


# ------------------------------------------------------------------------ by hand


def test_promote_then_rollback_walk_the_champion_history(store, model):
    client, name = model
    v1, v2, v3 = (add_version(client, name, a) for a in (0.9, 0.91, 0.92))
    for version in (v1, v2, v3):
        registry.promote(store, name, version, QUICK)
    assert registry.rollback(store, name, QUICK) == {"name": name, "champion": int(v2),
                                                    "previous": int(v3)}
    assert registry.rollback(store, name, QUICK)["champion"] == int(v1)
    assert champion(client, name) == v1
    assert registry.ROLLED_BACK_TAG in client.get_model_version(name, v3).tags
    assert json.loads(client.get_registered_model(name).tags["kdflow.last_rollback"])[
        "from"] == int(v2)
    with pytest.raises(RegistryError, match=f"^no earlier champion of {name} is recorded"):
        registry.rollback(store, name, QUICK)


def test_rollback_skips_a_deleted_version(store, model):
    client, name = model
    v1, v2, v3 = (add_version(client, name, a) for a in (0.9, 0.91, 0.92))
    for version in (v1, v2, v3):
        registry.promote(store, name, version, QUICK)
    client.delete_model_version(name, v2)
    assert registry.rollback(store, name, QUICK)["champion"] == int(v1)


def test_promoting_the_champion_again_changes_nothing(store, model):
    client, name = model
    v1 = add_version(client, name, 0.9)
    registry.promote(store, name, v1, QUICK)
    assert registry.promote(store, name, v1, QUICK)["changed"] is False


def test_promoting_a_missing_version_says_how_to_list_them(store, model):
    _, name = model
    with pytest.raises(RegistryError, match=(
        f"^{name} has no version 4; `kdflow models list {name}` lists them$"
    )):
        registry.promote(store, name, 4, QUICK)


def test_rollback_without_a_champion_says_so(store, model):
    _, name = model
    with pytest.raises(RegistryError, match=f"^{name} has no champion to roll back$"):
        registry.rollback(store, name, QUICK)


def test_listing_an_unknown_model_names_it_and_the_store(store):
    with pytest.raises(RegistryError, match=f"^nosuch is not a registered model in {store}"):
        registry.list_versions(store, "nosuch", QUICK)


def test_list_shows_versions_newest_first_with_their_aliases(store, model):
    client, name = model
    v1, v2 = add_version(client, name, 0.9), add_version(client, name, 0.91)
    registry.promote(store, name, v1, QUICK)
    client.set_registered_model_alias(name, registry.CHALLENGER, v2)
    rows = registry.list_versions(store, name, QUICK)
    assert [(r["version"], r["aliases"]) for r in rows] == [
        (int(v2), ["challenger"]), (int(v1), ["champion"])
    ]


def test_a_teacher_uri_resolves_to_the_version_its_alias_points_at(store, model):
    client, name = model
    add_version(client, name, 0.9)
    v2 = add_version(client, name, 0.95)
    client.set_registered_model_alias(name, "champion", v2)
    assert registry.resolve_model_uri(store, f"models:/{name}@champion", QUICK) == {
        "uri": f"models:/{name}@champion", "name": name, "version": int(v2),
        "pinned_uri": f"models:/{name}/{v2}",
    }
    assert registry.resolve_model_uri(store, f"models:/{name}@gone", QUICK) == {
        "uri": f"models:/{name}@gone", "name": name,
    }
    assert registry.resolve_model_uri(store, "mlp:hidden=64") == {"uri": "mlp:hidden=64"}
