"""Registration, promotion, rollback, concurrency and an outage against real servers.

`mlflow server` runs twice for the module: on a sqlite backend and on a PostgreSQL backend
(a fresh database; skipped with the reason when PostgreSQL is not reachable), both with
artifacts proxied to S3 served by moto's standalone server.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import uuid
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from kdflow.errors import RegistryError
from kdflow.mlflow import promotion, registry
from kdflow.mlflow.client import (
    ACCURACY_TAG,
    DATASET_TAG,
    HISTORY_TAG,
    RetryPolicy,
    mlflow_client,
)
from tests.integration.servers import (
    MlflowServer,
    moto_s3,
    postgres_database,
    postgres_reachable,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BACKENDS = ["sqlite", "postgres"]
# Short waits: a test must not sit through the default one-minute outage tolerance.
FAST = RetryPolicy(attempts=3, first_delay_s=0.5, lock_wait_s=120.0)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """One MLflow server per backend, started side by side, stopped by pid after."""
    logs = tmp_path_factory.mktemp("mlflow-servers")
    with ExitStack() as stack:
        s3 = stack.enter_context(moto_s3())
        launched = {"sqlite": MlflowServer(f"sqlite:///{logs / 'mlflow.db'}", s3, logs)}
        skipped = postgres_reachable()
        if skipped is None:
            launched["postgres"] = MlflowServer(
                stack.enter_context(postgres_database()), s3, logs
            )
        for server in launched.values():
            stack.callback(server.stop)
            server.launch()
        for server in launched.values():
            server.wait_healthy()
        yield SimpleNamespace(by_backend=launched, s3=s3, postgres_skipped=skipped)


@pytest.fixture(params=BACKENDS)
def server(request, servers) -> MlflowServer:
    if request.param not in servers.by_backend:
        pytest.skip(servers.postgres_skipped)
    found = servers.by_backend[request.param]
    if found.process is None:  # an earlier test's outage outlived it
        found.start()
    return found


@pytest.fixture(scope="module")
def students(digits_dataset, tmp_path_factory) -> SimpleNamespace:
    """Three students of clearly different accuracy: untrained, 1 epoch, 8 epochs."""
    from kdflow.config import TeacherConfig
    from kdflow.data.prepared import read_meta, read_split
    from kdflow.distill.driver import train_teacher
    from kdflow.distill.runtime import seed_everything
    from kdflow.models.artifacts import save_model
    from kdflow.models.zoo import build_classifier

    meta = read_meta(digits_dataset)
    train = read_split(digits_dataset, "train")
    root = tmp_path_factory.mktemp("students")
    seed_everything(0)
    model = build_classifier("mlp:hidden=16", meta.input_shape, meta.n_classes, meta.n_features)
    x = torch.from_numpy(train.x)
    model.set_normalisation(x.mean(0), x.std(0))
    folders = {"weak": save_model(model, root / "weak", meta.classes, meta.feature_columns)}
    for name, epochs in (("medium", 1), ("good", 8)):
        cfg = TeacherConfig(teacher_epochs=epochs, teacher_lr=3e-3, batch_size=64)
        train_teacher(str(digits_dataset), "mlp:hidden=16", cfg, 0, root / name)
        folders[name] = root / name
    return SimpleNamespace(**folders)


@pytest.fixture(scope="module")
def good_onnx(students, tmp_path_factory) -> Path:
    from kdflow.models.artifacts import load_model
    from kdflow.models.onnx import export_onnx

    model, spec = load_model(students.good)
    return export_onnx(model, spec["n_features"], tmp_path_factory.mktemp("onnx") / "model.onnx")


def summary_for(student: Path, dataset: Path, champion_seen: int | None = None) -> dict:
    """What evaluate would report for `student`, with its real test-split metrics."""
    from kdflow.data.prepared import read_meta, read_split
    from kdflow.evaluation.metrics import logits_on, quality_metrics
    from kdflow.models.artifacts import load_model
    from kdflow.models.zoo import count_params

    meta, test = read_meta(dataset), read_split(dataset, "test")
    model, _ = load_model(student)
    quality = quality_metrics(torch.softmax(logits_on(model, test), -1), test.y, meta.classes)
    return {
        "dataset": {"sha256": meta.sha256, "rows": 1797, "passed": True},
        "teachers": [{"spec": "mlp:hidden=128", "accuracy": 0.95, "params": 9610,
                      "latency_ms": 0.1}],
        "ensemble": {"accuracy": 0.96},
        "baseline": {"spec": "mlp:hidden=16", "accuracy": 0.5, "params": 1210,
                     "latency_ms": 0.05},
        "student": {"spec": "mlp:hidden=16", "params": count_params(model), "latency_ms": 0.05,
                    **quality},
        "champion": None,
        "champion_seen": champion_seen,
        "gates": {},
        "passed": True,
        "registered": None,
    }


def register(server: MlflowServer, name: str, student: Path, dataset: Path, *,
             promote: bool = True, champion_seen: int | None = None,
             policy: RetryPolicy = FAST) -> dict:
    return registry.register_student(
        student, summary_for(student, dataset, champion_seen), server.uri, name, promote,
        tags={"kdflow.run_id": f"run-{uuid.uuid4().hex[:6]}"}, policy=policy,
    )


def client(server: MlflowServer):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)


def fresh_name() -> str:
    return f"digits-{uuid.uuid4().hex[:8]}"


def kdflow_cli(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """`kdflow ARGV` through pipelines.cli.main, with the model commands registered."""
    from pipelines import cli
    from pipelines.cli_models import add_model_commands

    build = cli.build_parser

    def with_model_commands():
        parser = build()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "models" not in sub.choices:
            add_model_commands(sub)
        return parser

    monkeypatch.setattr(cli, "build_parser", with_model_commands)
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_complete(c, s3, name: str) -> None:
    """Every version of `name` has its model files in S3, and every alias is on a version.

    Reads S3 directly, so it works while the tracking server is down (with `c` a client on
    the server's backend database)."""
    keys = set(s3.keys("mlartifacts/"))
    versions = c.search_model_versions(f"name='{name}'")
    for version in versions:
        model_id = version.source.removeprefix("models:/")
        for file in ("model.safetensors", "spec.json"):
            assert any(k.endswith(f"/models/{model_id}/artifacts/artifacts/student/{file}")
                       for k in keys), (version.version, file)
    aliases = c.get_registered_model(name).aliases
    assert {str(v) for v in aliases.values()} <= {str(v.version) for v in versions}


# ------------------------------------------------------------------------------- tests


def test_registered_champion_loads_back_and_predicts_like_the_student(
    server, servers, students, good_onnx, digits_dataset
):
    import mlflow

    from kdflow.data.prepared import read_meta, read_split
    from kdflow.models.artifacts import load_model
    from kdflow.steps import champion_on_test
    from kdflow.steps import register as register_step

    name = fresh_name()
    summary = summary_for(students.good, digits_dataset)
    result = register_step(
        students.good, summary, server.uri, name, "auto", "pipeline-run-1",
        {"temperature": 2.0, "alpha": 0.2}, onnx_path=good_onnx, policy=FAST,
    )["registered"]
    assert (result["version"], result["aliases"]) == (1, ["challenger", "champion"])

    c = client(server)
    version = c.get_model_version_by_alias(name, "champion")
    tags = version.tags
    assert tags["kdflow.run_id"] == "pipeline-run-1"
    assert tags["kdflow.dataset_sha256"] == summary["dataset"]["sha256"]
    assert tags["kdflow.validation_passed"] == "true"
    assert json.loads(tags["kdflow.teachers"]) == [{"spec": "mlp:hidden=128"}]
    assert json.loads(tags["kdflow.kd"]) == {"alpha": 0.2, "temperature": 2.0}
    assert tags["kdflow.version"].startswith("0.")
    assert float(tags["kdflow.test_accuracy"]) == summary["student"]["accuracy"]
    metrics = c.get_run(version.run_id).data.metrics
    assert metrics["student_accuracy"] == summary["student"]["accuracy"]
    assert metrics["student_ece"] == pytest.approx(summary["student"]["ece"])

    keys = servers.s3.keys("mlartifacts/")
    model_id = version.source.removeprefix("models:/")
    assert any(k.endswith(f"{model_id}/artifacts/artifacts/student/model.safetensors")
               for k in keys)
    assert any(k.endswith("/artifacts/model.onnx") for k in keys)
    assert not [k for k in keys if k.endswith((".pkl", ".pickle", ".pt", ".pth"))]

    meta, test = read_meta(digits_dataset), read_split(digits_dataset, "test")
    student, _ = load_model(students.good)
    expected = student(torch.from_numpy(test.x)).argmax(1).numpy()
    mlflow.set_tracking_uri(server.uri)
    mlflow.set_registry_uri(server.uri)
    served = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    labels = served.predict(pd.DataFrame(test.x, columns=meta.feature_columns))["label"]
    assert list(labels) == [meta.classes[i] for i in expected]
    onnx = mlflow.pyfunc.load_model(tags["kdflow.onnx_model_uri"])
    logits = np.asarray(onnx.predict({"features": test.x})["logits"])
    assert (logits.argmax(1) == expected).all()

    champion = champion_on_test(server.uri, name, meta, test)
    assert champion["version"] == 1
    assert champion["accuracy"] == summary["student"]["accuracy"]


def test_promote_rollback_list_and_compare_from_the_cli(
    server, students, digits_dataset, monkeypatch, capsys
):
    name = fresh_name()
    first = register(server, name, students.good, digits_dataset)
    second = register(server, name, students.medium, digits_dataset, promote=False,
                      champion_seen=1)
    assert first["aliases"] == ["challenger", "champion"]
    assert second["aliases"] == ["challenger"] and not second["promoted"]
    c = client(server)
    assert c.get_model_version_by_alias(name, "champion").version == "1"
    # What a concurrent promotion compares is on every version.
    tags = c.get_model_version(name, "2").tags
    assert tags[DATASET_TAG] == summary_for(students.medium, digits_dataset)[
        "dataset"]["sha256"]
    assert float(tags[ACCURACY_TAG]) < float(
        c.get_model_version(name, "1").tags[ACCURACY_TAG])

    code, out, _ = kdflow_cli(monkeypatch, capsys, "promote", name, "2",
                              "--tracking-uri", server.uri)
    assert code == 0 and f"{name}@champion -> version 2 (was version 1)" in out
    assert c.get_model_version_by_alias(name, "champion").version == "2"

    code, out, _ = kdflow_cli(monkeypatch, capsys, "rollback", name, "--tracking-uri",
                              server.uri)
    assert code == 0 and "rolled back to version 1" in out
    assert c.get_model_version_by_alias(name, "champion").version == "1"
    assert "kdflow.rolled_back" in c.get_model_version(name, "2").tags
    assert json.loads(c.get_registered_model(name).tags["kdflow.last_rollback"])["from"] == 2

    code, out, _ = kdflow_cli(monkeypatch, capsys, "models", "list", name, "--tracking-uri",
                              server.uri)
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert code == 0 and set(rows) == {"1", "2"}
    assert "champion" in rows["1"] and "rolled back" in rows["2"]

    code, out, _ = kdflow_cli(monkeypatch, capsys, "compare", name, "1", "2",
                              "--tracking-uri", server.uri)
    accuracy = next(line for line in out.splitlines() if "student_accuracy" in line)
    assert code == 0 and "-" in accuracy.split()[-2]  # v2 - v1 is negative

    code, _, err = kdflow_cli(monkeypatch, capsys, "rollback", name, "--tracking-uri",
                              server.uri)
    assert code == 1
    assert err.strip() == (
        f"kdflow rollback: error: no earlier champion of {name} is recorded; pick one with "
        f"`kdflow models list {name}` and run `kdflow promote {name} VERSION`"
    )
    code, _, err = kdflow_cli(monkeypatch, capsys, "promote", name, "7", "--tracking-uri",
                              server.uri)
    assert (code, err.count("\n")) == (1, 1) and "has no version 7" in err


def test_two_runs_finishing_together_both_register_and_the_better_is_champion(
    server, servers, students, digits_dataset, monkeypatch
):
    name = fresh_name()
    register(server, name, students.weak, digits_dataset)  # v1: the champion both saw
    together = threading.Barrier(2)
    real_lock = promotion.promotion_lock

    def at_the_same_moment(*args, **kwargs):
        together.wait(timeout=120)
        return real_lock(*args, **kwargs)

    monkeypatch.setattr(promotion, "promotion_lock", at_the_same_moment)
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def finish(which: str) -> None:
        try:
            results[which] = register(server, name, getattr(students, which), digits_dataset,
                                      champion_seen=1)
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=(w,)) for w in ("medium", "good")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert sorted(r["version"] for r in results.values()) == [2, 3]
    champion = client(server).get_model_version_by_alias(name, "champion")
    assert int(champion.version) == results["good"]["version"]
    assert results["good"]["promoted"]
    # The medium run either never promoted (good was first) or was replaced by good.
    history = json.loads(client(server).get_registered_model(name).tags[HISTORY_TAG])
    assert history[-1] == results["good"]["version"]
    assert_complete(client(server), servers.s3, name)


def test_a_retried_register_step_never_deletes_what_an_earlier_attempt_registered(
    servers, students, digits_dataset, monkeypatch
):
    """Attempt 1 registers and promotes, then its pod dies before the step reports; attempt 2
    (the same pipeline run, so the same MLflow run) fails early; attempt 3 succeeds. Version 1
    and its champion survive attempt 2, and attempt 3 adopts it rather than adding another."""
    server = servers.by_backend["sqlite"]
    name = fresh_name()
    tags = {"kdflow.run_id": f"run-{uuid.uuid4().hex[:6]}"}
    summary = summary_for(students.good, digits_dataset)

    def attempt() -> dict:
        return registry.register_student(students.good, summary, server.uri, name, True,
                                         tags=tags, policy=FAST)

    first = attempt()
    assert (first["version"], first["aliases"]) == (1, ["challenger", "champion"])

    def fails_early(*args, **kwargs):
        raise ConnectionError("the node lost its network")

    with monkeypatch.context() as patch:
        patch.setattr(registry, "log_models", fails_early)
        with pytest.raises(RegistryError, match="the node lost its network"):
            attempt()
    c = client(server)
    assert [str(v.version) for v in c.search_model_versions(f"name='{name}'")] == ["1"]
    aliases = c.get_registered_model(name).aliases
    assert {k: str(v) for k, v in aliases.items()} == {"challenger": "1", "champion": "1"}

    third = attempt()
    assert (third["version"], third["aliases"]) == (1, ["challenger", "champion"])
    assert [str(v.version) for v in c.search_model_versions(f"name='{name}'")] == ["1"]


def test_data_that_passed_only_under_warn_registers_as_challenger_never_champion(
    servers, students, digits_dataset
):
    server = servers.by_backend["sqlite"]
    name = fresh_name()
    summary = summary_for(students.good, digits_dataset)
    summary["dataset"]["passed"] = False  # validated under --validation warn, with findings
    found = registry.register_student(students.good, summary, server.uri, name, True,
                                      tags={"kdflow.run_id": "warned"}, policy=FAST)
    assert (found["aliases"], found["promoted"]) == (["challenger"], False)
    assert "only under --validation warn" in found["promotion_detail"]
    assert set(client(server).get_registered_model(name).aliases) == {"challenger"}


def test_outage_mid_registration_is_retried_then_fails_cleanly(
    servers, students, digits_dataset, monkeypatch, caplog
):
    from mlflow import MlflowClient

    server = servers.by_backend["sqlite"]
    name = fresh_name()
    caplog.set_level(logging.WARNING, logger="kdflow.mlflow.client")

    # A short outage: the server dies while the model files upload and comes back.
    upload = MlflowClient.log_model_artifacts
    outages: list[str] = []
    restart_errors: list[BaseException] = []

    def restart() -> None:
        try:
            server.start()
        except BaseException as exc:  # reported by the assert below
            restart_errors.append(exc)

    def dies_during_upload(self, *args, **kwargs):
        if not outages:
            outages.append("upload")
            server.kill()
            threading.Thread(target=restart, daemon=True).start()
        return upload(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_model_artifacts", dies_during_upload)
    # Patient enough for a restart on a loaded machine (about 15 s idle, a minute or more busy).
    patient = RetryPolicy(attempts=40, first_delay_s=1.0, max_delay_s=5.0, http_timeout_s=10)
    try:
        first = register(server, name, students.good, digits_dataset, policy=patient)
    finally:
        assert not restart_errors, restart_errors
    assert (first["version"], first["aliases"]) == (1, ["challenger", "champion"])
    assert "could not upload the pyfunc model (attempt 1 of 40)" in caplog.text
    monkeypatch.setattr(MlflowClient, "log_model_artifacts", upload)

    # An outage that outlasts the policy: the server dies as the version is being created.
    create = MlflowClient.create_model_version

    def dies_creating_the_version(self, *args, **kwargs):
        server.kill()
        return create(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "create_model_version", dies_creating_the_version)
    with pytest.raises(RegistryError, match=(
        f"^could not create a version of {name} in 2 attempts "
        r"\(backoff up to .*then run the step again$"
    )):
        register(server, name, students.medium, digits_dataset, champion_seen=1,
                 policy=RetryPolicy(attempts=2, first_delay_s=0.5, http_timeout_s=5))
    monkeypatch.setattr(MlflowClient, "create_model_version", create)

    # Read the outcome from the backend database itself: the server is still down.
    c = mlflow_client(server.backend_uri)
    # (the store answers with int versions where the REST client gives strings)
    assert [str(v.version) for v in c.search_model_versions(f"name='{name}'")] == ["1"]
    aliases = c.get_registered_model(name).aliases
    assert {k: str(v) for k, v in aliases.items()} == {"challenger": "1", "champion": "1"}
    assert_complete(c, servers.s3, name)
