"""PostgreSQL on a real cluster: a disruption budget that holds its one pod, probes that give
initdb and crash recovery time, logins for MLflow and the backup that are not the superuser
(roles.sql, applied by a sidecar on every start), and a daily pg_dump to S3.

The manifests are rendered with the real `kubectl kustomize` (conftest.py). The integration
tests run the rendered roles.sql and the sidecar's script against the PostgreSQL that
`.ci/run` starts on 127.0.0.1:5432, with psql and pg_dump from this machine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from manifest_checks import (
    credential_violations,
    image_violations,
    resource_violations,
    security_violations,
)
from manifest_files import Rendered

from tests.integration.servers import PG_HOST, PG_PORT, postgres_reachable

LOGIN_SECRETS = {"MLFLOW_DB": "postgres-mlflow", "BACKUP_DB": "postgres-backup"}
SUPERUSER_SECRET = "postgres-credentials"


def statefulset_pod(overlay: Rendered) -> dict[str, Any]:
    return overlay.one("StatefulSet", "postgres")["spec"]["template"]


def container(pod: dict[str, Any], name: str, kind: str = "containers") -> dict[str, Any]:
    (found,) = [c for c in pod["spec"].get(kind, []) if c["name"] == name]
    return found


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def secret_ref(entry: dict[str, Any]) -> tuple[str, str]:
    ref = entry["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def roles_sql(overlay: Rendered) -> str:
    pod = statefulset_pod(overlay)
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "roles-sql"]
    config = overlay.one("ConfigMap", volume["configMap"]["name"])
    return config["data"]["roles.sql"]


def sidecar_script(overlay: Rendered) -> str:
    sidecar = container(statefulset_pod(overlay), "roles", "initContainers")
    assert sidecar["command"] == ["sh", "-c"]
    return sidecar["args"][0]


def backup_pod(overlay: Rendered) -> dict[str, Any]:
    cronjob = overlay.one("CronJob", "postgres-backup")
    return cronjob["spec"]["jobTemplate"]["spec"]["template"]


# --- disruption budget and probes --------------------------------------------------------------


def test_postgres_pdb_selects_the_postgres_pod_and_holds_it(overlay: Rendered) -> None:
    (pdb,) = [
        p for p in overlay.of_kind("PodDisruptionBudget") if p["metadata"]["name"] == "postgres"
    ]
    selector = pdb["spec"]["selector"]["matchLabels"]
    labels = statefulset_pod(overlay)["metadata"]["labels"]
    assert selector.items() <= labels.items()
    # One replica: maxUnavailable 0 means a drain waits for you, not that it takes the database.
    assert overlay.one("StatefulSet", "postgres")["spec"]["replicas"] == 1
    assert pdb["spec"]["maxUnavailable"] == 0 and "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    # It holds no other pod (the backup's pods carry app.kubernetes.io/name too).
    backup_labels = backup_pod(overlay)["metadata"]["labels"]
    assert not selector.items() <= backup_labels.items()


def test_postgres_has_startup_readiness_and_liveness_probes(overlay: Rendered) -> None:
    server = container(statefulset_pod(overlay), "postgres")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = " ".join(server[probe]["exec"]["command"])
        # Over TCP: the entrypoint's init server listens on the socket only.
        assert "pg_isready -h 127.0.0.1" in command, probe
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # initdb, WAL replay
    assert "initialDelaySeconds" not in server["livenessProbe"]


# --- logins that are not the superuser ---------------------------------------------------------


def test_roles_sidecar_runs_beside_the_server_and_gates_readiness(overlay: Rendered) -> None:
    pod = statefulset_pod(overlay)
    sidecar = container(pod, "roles", "initContainers")
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: it runs beside the server
    assert sidecar["image"] == container(pod, "postgres")["image"]
    assert sidecar["readinessProbe"]["exec"]["command"] == ["test", "-f", "/tmp/roles-applied"]
    script = sidecar_script(overlay)
    assert "until pg_isready -q -h 127.0.0.1" in script
    assert "-f /etc/kdflow/roles.sql" in script and "touch /tmp/roles-applied" in script
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    assert mounts["roles-sql"] == "/etc/kdflow"


def test_roles_sql_reads_every_value_from_the_sidecars_secrets(overlay: Rendered) -> None:
    sidecar = container(statefulset_pod(overlay), "roles", "initContainers")
    env = env_of(sidecar)
    wanted = set(re.findall(r"^\\getenv \w+ (\w+)$", roles_sql(overlay), re.MULTILINE))
    assert wanted == {
        "POSTGRES_USER",
        "POSTGRES_DB",
        "MLFLOW_DB_USER",
        "MLFLOW_DB_PASSWORD",
        "BACKUP_DB_USER",
        "BACKUP_DB_PASSWORD",
    }
    assert wanted <= set(env)
    for prefix, secret in LOGIN_SECRETS.items():
        assert secret_ref(env[f"{prefix}_USER"]) == (secret, "POSTGRES_USER")
        assert secret_ref(env[f"{prefix}_PASSWORD"]) == (secret, "POSTGRES_PASSWORD")
    assert secret_ref(env["PGPASSWORD"]) == (SUPERUSER_SECRET, "POSTGRES_PASSWORD")
    # Passwords never on psql's command line, where `ps` shows them.
    assert "PASSWORD" not in sidecar_script(overlay).split("psql", 1)[1].split("\n", 1)[0]


def test_mlflow_role_is_created_nosuperuser(overlay: Rendered) -> None:
    sql = roles_sql(overlay)
    (mlflow,) = re.findall(r'ALTER ROLE :"mlflow_user" WITH ([^;]+);', sql)
    attributes = set(mlflow.split())
    assert {"LOGIN", "NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE", "NOREPLICATION"} <= attributes
    (backup,) = re.findall(r'ALTER ROLE :"backup_user" WITH ([^;]+);', sql)
    assert {"NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE"} <= set(backup.split())
    assert 'GRANT pg_read_all_data TO :"backup_user";' in sql
    assert 'ALTER DATABASE :"db" OWNER TO :"mlflow_user";' in sql
    # No statement grants a role the superuser attribute.
    code = [line for line in sql.splitlines() if not line.lstrip().startswith(("--", "\\warn"))]
    assert set(re.findall(r"\b(\w*)SUPERUSER\b", "\n".join(code))) == {"NO"}


# --- the backup CronJob ------------------------------------------------------------------------


def test_backup_runs_daily_one_at_a_time(overlay: Rendered) -> None:
    spec = overlay.one("CronJob", "postgres-backup")["spec"]
    minute, hour, day, month, weekday = spec["schedule"].split()
    assert minute.isdigit() and hour.isdigit() and (day, month, weekday) == ("*", "*", "*")
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 1 <= spec["successfulJobsHistoryLimit"] <= 5 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert 0 < job["backoffLimit"] <= 3 and job["activeDeadlineSeconds"] > 0
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_backup_pod_is_locked_down(overlay: Rendered) -> None:
    cronjob = overlay.one("CronJob", "postgres-backup")
    for check in (security_violations, resource_violations, image_violations):
        assert check(cronjob) == [], check.__name__
    pod = backup_pod(overlay)["spec"]
    assert pod["automountServiceAccountToken"] is False
    account = overlay.one("ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    uid = pod["securityContext"]["runAsUser"]
    assert uid != 0 and pod["securityContext"]["runAsNonRoot"] is True
    for c in pod["initContainers"] + pod["containers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
        assert c["resources"]["limits"]["memory"] and c["resources"]["limits"]["cpu"], c["name"]


def test_backup_reads_credentials_only_from_secrets(overlay: Rendered) -> None:
    cronjob = overlay.one("CronJob", "postgres-backup")
    assert credential_violations(cronjob) == []
    pod = backup_pod(overlay)["spec"]
    dump, upload = container({"spec": pod}, "dump", "initContainers"), pod["containers"][0]
    dump_env, upload_env = env_of(dump), env_of(upload)
    # The read-only login, not the superuser.
    assert secret_ref(dump_env["PGUSER"]) == ("postgres-backup", "POSTGRES_USER")
    assert secret_ref(dump_env["PGPASSWORD"]) == ("postgres-backup", "POSTGRES_PASSWORD")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert secret_ref(upload_env[key]) == ("kdflow-s3", key)
    literal = [
        (c["name"], e["name"])
        for c in (dump, upload)
        for e in c["env"]
        if "value" in e and re.search(r"AKIA|PASSWORD|SECRET", e["value"], re.IGNORECASE)
    ]
    assert literal == []


def test_backup_dumps_mlflows_database_and_uploads_it_to_s3(overlay: Rendered) -> None:
    pod = backup_pod(overlay)["spec"]
    dump = container({"spec": pod}, "dump", "initContainers")
    (upload,) = pod["containers"]
    script = dump["args"][0]
    assert "pg_dump --format=custom" in script and "pg_restore --list" in script
    assert '$(date -u +%Y%m%dT%H%M%SZ).dump"' in script
    env = env_of(dump)
    mlflow_config = env["PGDATABASE"]["valueFrom"]["configMapKeyRef"]
    assert mlflow_config["key"] == "MLFLOW_DB_NAME"
    assert overlay.one("ConfigMap", mlflow_config["name"])["data"]["MLFLOW_DB_NAME"] == "mlflow"
    # pg_dump refuses a server newer than itself: the same image as the server.
    assert dump["image"] == container(statefulset_pod(overlay), "postgres")["image"]
    # The upload starts only after the dump (an init container) succeeded, and only reads it.
    assert {m["mountPath"]: m.get("readOnly") for m in upload["volumeMounts"]}["/backup"] is True
    assert 'aws s3 cp --only-show-errors "$file" "$target"' in upload["args"][0]
    (config_ref,) = upload["envFrom"]
    config = overlay.one("ConfigMap", config_ref["configMapRef"]["name"])["data"]
    assert re.fullmatch(r"s3://[a-z0-9.-]+/kdflow-backups", config["KDFLOW_BACKUP_URI"])


# --- roles.sql and the sidecar against a real PostgreSQL ---------------------------------------


@pytest.fixture(scope="module")
def postgres() -> None:
    reason = postgres_reachable()
    if reason:
        pytest.skip(reason)
    for tool in ("psql", "pg_dump", "pg_restore", "pg_isready"):
        if shutil.which(tool) is None:
            pytest.skip(f"no {tool} on PATH")


def psql(*args: str, user: str = "postgres", db: str = "postgres", env=None, check=True):
    result = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", PG_HOST, "-p", str(PG_PORT),
         "-U", user, "-d", db, *args],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    if check and result.returncode != 0:
        pytest.fail(f"psql {' '.join(args)} as {user}: {result.stderr}")
    return result


def scalar(sql: str, db: str = "postgres", user: str = "postgres") -> str:
    return psql("-A", "-t", "-c", sql, db=db, user=user).stdout.strip()


@pytest.fixture
def logins(postgres, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The sidecar's environment for a database and two logins of their own; dropped after."""
    tag = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "PGHOST": PG_HOST,
        "PGPORT": str(PG_PORT),
        "PGUSER": "postgres",
        "HOME": str(tmp_path),
        "POSTGRES_USER": "postgres",
        "POSTGRES_DB": f"kdflow_{tag}",
        "MLFLOW_DB_USER": f"kdflow_{tag}_mlflow",
        "MLFLOW_DB_PASSWORD": uuid.uuid4().hex,
        "BACKUP_DB_USER": f"kdflow_{tag}_backup",
        "BACKUP_DB_PASSWORD": uuid.uuid4().hex,
    }
    yield env
    db = env["POSTGRES_DB"]
    psql("-c", f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")
    psql("-c", f'DROP DATABASE IF EXISTS "{db}"')
    for role in (env["MLFLOW_DB_USER"], env["BACKUP_DB_USER"]):
        psql("-c", f'DROP ROLE IF EXISTS "{role}"')


def apply_roles(overlay: Rendered, env: dict[str, str], tmp_path: Path, check: bool = True):
    sql = tmp_path / "roles.sql"
    sql.write_text(roles_sql(overlay))
    return psql("-f", str(sql), env=env, check=check)


@pytest.mark.integration
def test_roles_sql_creates_mlflows_database_on_a_fresh_server(
    render, logins, tmp_path: Path
) -> None:
    dev = render("overlays/dev")
    for _ in range(2):  # every start of the pod applies it again
        apply_roles(dev, logins, tmp_path)
    db, mlflow, backup = logins["POSTGRES_DB"], logins["MLFLOW_DB_USER"], logins["BACKUP_DB_USER"]
    attributes = "rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolcanlogin"
    for role in (mlflow, backup):
        assert scalar(f"SELECT {attributes} FROM pg_roles WHERE rolname = '{role}'") == (
            "f|f|f|f|t"
        )
    owner = f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{db}'"
    assert scalar(owner) == mlflow
    # MLflow's login migrates its schema in its own database, and can do nothing beyond it.
    psql("-c", "CREATE TABLE runs (id serial PRIMARY KEY, name text)", user=mlflow, db=db)
    psql("-c", "INSERT INTO runs (name) VALUES ('a')", user=mlflow, db=db)
    refused = psql("-c", "CREATE ROLE intruder", user=mlflow, db=db, check=False)
    assert refused.returncode != 0 and "permission denied" in refused.stderr
    refused = psql("-c", "CREATE DATABASE other", user=mlflow, db=db, check=False)
    assert refused.returncode != 0 and "permission denied" in refused.stderr
    # The backup's login reads it all and writes nothing.
    assert scalar("SELECT count(*) FROM runs", db=db, user=backup) == "1"
    refused = psql("-c", "INSERT INTO runs (name) VALUES ('b')", user=backup, db=db, check=False)
    assert refused.returncode != 0


@pytest.mark.integration
def test_roles_sql_hands_an_existing_install_to_mlflows_login(
    render, logins, tmp_path: Path
) -> None:
    # A volume an older kdflow initialised: MLflow migrated as the superuser.
    db, mlflow = logins["POSTGRES_DB"], logins["MLFLOW_DB_USER"]
    psql("-c", f'CREATE DATABASE "{db}"')
    psql(
        "-c", "CREATE TYPE status AS ENUM ('RUNNING', 'FINISHED')",
        "-c", "CREATE TABLE experiments (id int GENERATED ALWAYS AS IDENTITY, name text)",
        "-c", "CREATE TABLE runs (id serial PRIMARY KEY, status status)",
        "-c", "CREATE SEQUENCE standalone_seq",
        "-c", "CREATE VIEW finished AS SELECT * FROM runs WHERE status = 'FINISHED'",
        db=db,
    )  # fmt: skip
    apply_roles(render("overlays/dev"), logins, tmp_path)
    owners = psql(
        "-A", "-t", "-c",
        "SELECT relname || '=' || pg_get_userbyid(relowner) FROM pg_class "
        "WHERE relnamespace = 'public'::regnamespace ORDER BY relname",
        db=db,
    ).stdout.split()  # fmt: skip
    assert owners and all(o.endswith(f"={mlflow}") for o in owners), owners
    assert scalar(
        "SELECT pg_get_userbyid(typowner) FROM pg_type WHERE typname = 'status'", db=db
    ) == (mlflow)
    # Its next migration can alter what the superuser made.
    psql("-c", "ALTER TABLE runs ADD COLUMN tag text", user=mlflow, db=db)


@pytest.mark.integration
def test_backup_login_can_pg_dump_mlflows_database(render, logins, tmp_path: Path) -> None:
    apply_roles(render("overlays/dev"), logins, tmp_path)
    db, mlflow, backup = logins["POSTGRES_DB"], logins["MLFLOW_DB_USER"], logins["BACKUP_DB_USER"]
    psql("-c", "CREATE TABLE runs (id serial PRIMARY KEY); INSERT INTO runs DEFAULT VALUES",
         user=mlflow, db=db)  # fmt: skip
    dump = tmp_path / "mlflow.dump"
    subprocess.run(
        ["pg_dump", "--format=custom", "--no-password", f"--file={dump}",
         "-h", PG_HOST, "-p", str(PG_PORT), "-U", backup, "-d", db],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    listing = subprocess.run(
        ["pg_restore", "--list", str(dump)], check=True, capture_output=True, text=True
    ).stdout
    assert "TABLE DATA public runs" in listing


@pytest.mark.integration
@pytest.mark.parametrize(
    "change",
    [
        {"MLFLOW_DB_USER": "postgres"},  # the superuser: it would be demoted
        {"BACKUP_DB_USER": "postgres"},
        {"MLFLOW_DB_PASSWORD": ""},  # an applied template
        {"BACKUP_DB_USER": None},  # the same login twice
    ],
    ids=["mlflow-is-superuser", "backup-is-superuser", "empty-password", "same-login"],
)
def test_roles_sql_refuses_logins_that_would_break_the_server(
    render, logins, tmp_path: Path, change: dict[str, str | None]
) -> None:
    env = dict(logins)
    for key, value in change.items():
        env[key] = env["MLFLOW_DB_USER"] if value is None else value
    result = apply_roles(render("overlays/dev"), env, tmp_path, check=False)
    assert result.returncode != 0
    assert "kdflow: Secrets postgres-mlflow and postgres-backup" in result.stderr
    assert scalar("SELECT rolsuper FROM pg_roles WHERE rolname = 'postgres'") == "t"
    # Refused before anything changed: neither login exists.
    names = f"'{logins['MLFLOW_DB_USER']}', '{logins['BACKUP_DB_USER']}'"
    assert scalar(f"SELECT count(*) FROM pg_roles WHERE rolname IN ({names})") == "0"


@pytest.mark.integration
def test_sidecar_script_applies_the_roles_then_idles_until_terminated(
    render, logins, tmp_path: Path
) -> None:
    dev = render("overlays/dev")
    sql, marker = tmp_path / "roles.sql", tmp_path / "roles-applied"
    sql.write_text(roles_sql(dev))
    script = (
        sidecar_script(dev)
        .replace("/etc/kdflow/roles.sql", str(sql))
        .replace("/tmp/roles-applied", str(marker))
    )
    # Its own session, so the `sleep` it leaves behind is stopped with it below.
    process = subprocess.Popen(
        ["sh", "-c", script], env=logins, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "are in place" in line, line
        assert marker.is_file()
        assert process.poll() is None, "the sidecar exits: Kubernetes would restart it in a loop"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0  # no 30 s grace period spent on a shutdown
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)
    owner = (
        f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{logins['POSTGRES_DB']}'"
    )
    assert scalar(owner) == logins["MLFLOW_DB_USER"]
