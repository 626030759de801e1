"""kdflow against a real `mlflow server --app-name basic-auth`, set up as the manifests set it up.

One server per backend (sqlite; PostgreSQL, a fresh database, skipped with the reason when it is
not reachable), the auth app's users in the SAME database as the tracking store (as
manifests/base/mlflow has it), `default_permission = NO_PERMISSIONS`, the admin
from MLFLOW_AUTH_ADMIN_*, artifacts proxied to moto's S3. The pipeline's user is created by the
cluster's own script (manifests/base/mlflow/create_user.py, the create-user Job's).

MLflow's auth app needs Flask-WTF (`mlflow[auth]`; the server image `-full` has it): without it
in this environment the module is skipped.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from kdflow.errors import RegistryError
from kdflow.mlflow import registry
from kdflow.mlflow.client import RetryPolicy
from tests.integration.servers import (
    CREDENTIALS,
    MlflowServer,
    moto_s3,
    postgres_database,
    postgres_reachable,
)
from tests.integration.test_registry_servers import kdflow_cli, summary_for

# MLflow's basic-auth app needs Flask-WTF: the dev extra installs `mlflow[auth]`, as the
# server image ghcr.io/mlflow/mlflow:*-full does.
pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
CREATE_USER = REPO / "manifests" / "base" / "mlflow" / "create_user.py"
ADMIN = ("admin", "admin-" + uuid.uuid4().hex[:16])
FAST = RetryPolicy(attempts=2, first_delay_s=0.2)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request, tmp_path_factory) -> Iterator[MlflowServer]:
    root = tmp_path_factory.mktemp("mlflow-auth")
    with ExitStack() as stack:
        if request.param == "sqlite":
            database = f"sqlite:///{root / 'mlflow.db'}"
        elif (skipped := postgres_reachable()) is not None:
            pytest.skip(skipped)
        else:
            database = stack.enter_context(postgres_database())
        yield stack.enter_context(_auth_server(root, database))


@contextmanager
def _auth_server(root: Path, database: str) -> Iterator[MlflowServer]:
    ini = root / "basic_auth.ini"
    # What the Deployment's init container writes. Without the credential cache each request
    # spends ~0.25 s hashing the password, and one registration makes ~150 requests.
    ini.write_text(
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = {database}\nauth_cache_ttl_seconds = 60\n"
    )
    with moto_s3() as s3:
        found = MlflowServer(
            database, s3, root, app_name="basic-auth",
            extra_env={
                "MLFLOW_AUTH_CONFIG_PATH": str(ini),
                "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
                "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
                "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
            },
        )
        try:
            yield found.start()
        finally:
            found.stop()


def create_user(server: MlflowServer, user: str, password: str,
                admin: tuple[str, str] = ADMIN) -> subprocess.CompletedProcess:
    """manifests/base/mlflow/create_user.py, with the environment its Job gives it."""
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIALS}
    env.update({
        "MLFLOW_TRACKING_URI": server.uri,
        "MLFLOW_TRACKING_USERNAME": admin[0],
        "MLFLOW_TRACKING_PASSWORD": admin[1],
        "KDFLOW_MLFLOW_USERNAME": user,
        "KDFLOW_MLFLOW_PASSWORD": password,
        "MLFLOW_WAIT_S": "30",
    })
    return subprocess.run([sys.executable, str(CREATE_USER)], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def kdflow_user(server) -> SimpleNamespace:
    user = SimpleNamespace(name="kdflow", password="pw-" + uuid.uuid4().hex)
    done = create_user(server, user.name, user.password)
    assert done.returncode == 0, done.stderr
    return user


def login(monkeypatch, user: str | None, password: str | None) -> None:
    for name in CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    if user is not None:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    if password is not None:
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)


def status_of(url: str, user: str | None = None, password: str | None = None) -> int:
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


@pytest.fixture(scope="module")
def student(tmp_path_factory, digits_dataset) -> Path:
    """An untrained student: registration does not care how good it is."""
    import torch

    from kdflow.data.prepared import read_meta, read_split
    from kdflow.models.artifacts import save_model
    from kdflow.models.zoo import build_classifier

    meta = read_meta(digits_dataset)
    x = torch.from_numpy(read_split(digits_dataset, "train").x)
    model = build_classifier("mlp:hidden=16", meta.input_shape, meta.n_classes, meta.n_features)
    model.set_normalisation(x.mean(0), x.std(0))
    return save_model(model, tmp_path_factory.mktemp("student") / "student", meta.classes,
                      meta.feature_columns)


def register(server: MlflowServer, name: str, student: Path, dataset: Path) -> dict:
    return registry.register_student(
        student, summary_for(student, dataset), server.uri, name, True,
        tags={"kdflow.run_id": f"run-{uuid.uuid4().hex[:6]}"}, policy=FAST,
    )


# ------------------------------------------------------------------------------------ tests


def test_health_answers_without_a_login_and_the_api_asks_for_one(server) -> None:
    # The Deployment's probes call /health with no credentials.
    assert status_of(f"{server.uri}/health") == 200
    assert status_of(f"{server.uri}/api/2.0/mlflow/experiments/search?max_results=1") == 401


def test_create_user_script_is_idempotent_and_refuses_a_wrong_admin(
    server, monkeypatch
) -> None:
    from mlflow.server import get_app_client

    name = f"u{uuid.uuid4().hex[:8]}"
    first, second = "p1-" + uuid.uuid4().hex, "p2-" + uuid.uuid4().hex
    done = create_user(server, name, first)
    assert done.returncode == 0 and f"created MLflow user {name!r}" in done.stdout, done.stderr
    again = create_user(server, name, second)
    assert again.returncode == 0 and "set its password again" in again.stdout, again.stderr
    current = f"{server.uri}/api/2.0/mlflow/users/current"
    assert status_of(current, name, first) == 401
    assert status_of(current, name, second) == 200
    login(monkeypatch, *ADMIN)
    assert get_app_client("basic-auth", server.uri).get_user(name).is_admin is False

    wrong = create_user(server, name, second, admin=(ADMIN[0], "not-the-admin-password"))
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
    assert wrong.stderr.strip() == (
        f"create-user: error: {server.uri} refused the admin {ADMIN[0]!r}: "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD must be the ones the server was "
        "first started with (Secret mlflow-auth)"
    )
    as_admin = create_user(server, ADMIN[0], second)
    assert as_admin.returncode == 1 and "is the admin" in as_admin.stderr


def test_pipeline_user_registers_and_lists_its_model(
    server, kdflow_user, student, digits_dataset, monkeypatch, capsys
) -> None:
    """NO_PERMISSIONS by default, yet a plain user creates the experiment, the run, the
    registered model, its artifacts and aliases: MLflow makes the creator their manager."""
    login(monkeypatch, kdflow_user.name, kdflow_user.password)
    name = f"digits-{uuid.uuid4().hex[:8]}"
    result = register(server, name, student, digits_dataset)
    assert (result["version"], result["aliases"]) == (1, ["challenger", "champion"])
    assert any(k.endswith("/artifacts/artifacts/student/model.safetensors")
               for k in server.s3.keys("mlartifacts/"))

    code, out, err = kdflow_cli(monkeypatch, capsys, "models", "list", name,
                                "--tracking-uri", server.uri)
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert code == 0, err
    assert len(rows) == 1 and rows[0].split()[0] == "1" and "champion" in rows[0]

    # Another plain user sees none of it (NO_PERMISSIONS): one clear line, no traceback.
    other = SimpleNamespace(name=f"o{uuid.uuid4().hex[:8]}", password="po-" + uuid.uuid4().hex)
    assert create_user(server, other.name, other.password).returncode == 0
    login(monkeypatch, other.name, other.password)
    code, out, err = kdflow_cli(monkeypatch, capsys, "models", "list", name,
                                "--tracking-uri", server.uri)
    assert code == 1 and "Traceback" not in err
    assert err.strip() == (
        f"kdflow models: error: {server.uri} refused the request (HTTP 403, user "
        f"{other.name!r} has no permission on {name}); an MLflow admin must grant it one, or "
        "use the user that created it"
    )


@pytest.mark.parametrize(
    ("user", "password", "why"),
    [
        ("kdflow", "wrong-password-123", "user 'kdflow' or its password is wrong"),
        (None, None, "no credentials were sent: MLFLOW_TRACKING_USERNAME is not set"),
        ("kdflow", None, "no credentials were sent: MLFLOW_TRACKING_PASSWORD is not set"),
    ],
    ids=["wrong-password", "no-credentials", "no-password"],
)
def test_refused_credentials_are_one_clear_line(
    server, kdflow_user, student, digits_dataset, monkeypatch, capsys, user, password, why
) -> None:
    login(monkeypatch, user, password)
    hint = (
        f"refused the credentials (HTTP 401, {why}); set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD to a user of its basic-auth app (on a cluster: Secret "
        "kdflow-mlflow)"
    )
    code, out, err = kdflow_cli(monkeypatch, capsys, "models", "list", "anything",
                                "--tracking-uri", server.uri)
    assert code == 1 and "Traceback" not in err
    assert err.strip() == f"kdflow models: error: {server.uri} {hint}"

    name = f"digits-{uuid.uuid4().hex[:8]}"
    with pytest.raises(RegistryError) as raised:
        register(server, name, student, digits_dataset)
    assert str(raised.value) == f"registering {name} in {server.uri} failed: the server {hint}"
    assert kdflow_user.password not in str(raised.value)
