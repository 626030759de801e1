"""MLflow runs its basic-auth app with the admin from a Secret, answers only the pipeline, the Ray
cluster and its create-user Job, probes /health, and keeps one replica through a drain.

Every overlay is rendered with the real `kubectl kustomize` (conftest.py). The init container's
script is run here with `sh`, and the ini it writes is read by MLflow's own config reader.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifest_checks import CREDENTIAL_NAME, iter_containers
from manifest_files import MANIFESTS, SECRET_TEMPLATES, Rendered, read_params

AUTH_SECRET = "mlflow-auth"
PIPELINE_SECRET = "kdflow-mlflow"
JOB = "mlflow-create-user"
AUTH_KEYS = ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
             "MLFLOW_FLASK_SERVER_SECRET_KEY")
TRACKING_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def pod_spec(rendered: Rendered, kind: str, name: str) -> dict[str, Any]:
    return rendered.one(kind, name)["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env") or []}


def secret_ref(env: dict[str, Any]) -> tuple[str, str, bool]:
    ref = (env.get("valueFrom") or {}).get("secretKeyRef")
    assert ref is not None, f"{env['name']} does not come from a Secret"
    return ref["name"], ref["key"], bool(ref.get("optional", False))


def server(rendered: Rendered) -> dict[str, Any]:
    (container,) = pod_spec(rendered, "Deployment", "mlflow")["containers"]
    return container


def mlflow_read_auth_config():
    """mlflow/server/auth/config.py's `read_auth_config`, loaded by path: the package's
    __init__ needs Flask-WTF, which only the server image has."""
    spec = importlib.util.find_spec("mlflow")
    assert spec is not None and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / "server" / "auth" / "config.py"
    module_spec = importlib.util.spec_from_file_location("mlflow_auth_config", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.read_auth_config


# --- the server -----------------------------------------------------------------------------


def test_server_runs_the_basic_auth_app(overlay: Rendered) -> None:
    args = server(overlay)["args"]
    assert args[0] == "server" and "--app-name=basic-auth" in args


def test_admin_and_csrf_key_come_from_the_auth_secret(overlay: Rendered) -> None:
    env = env_of(server(overlay))
    for key in AUTH_KEYS:
        assert secret_ref(env[key]) == (AUTH_SECRET, key, False), key


def test_init_container_writes_an_ini_mlflow_reads(
    overlay: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The init script, run by `sh` with the env Kubernetes would give it, writes an ini with
    mode 600 that MLflow's reader accepts: NO_PERMISSIONS, the users in MLflow's database."""
    if shutil.which("sh") is None:
        pytest.skip("no sh")
    spec = pod_spec(overlay, "Deployment", "mlflow")
    container = server(overlay)
    (init,) = spec["initContainers"]
    assert init["image"] == container["image"]
    init_env, env = env_of(init), env_of(container)
    # The same database URI as the tracking store, assembled from the same Secret.
    assert init_env["MLFLOW_AUTH_DATABASE_URI"]["value"] == (
        env["MLFLOW_BACKEND_STORE_URI"]["value"])
    for key in ("POSTGRES_USER", "POSTGRES_PASSWORD"):
        assert secret_ref(init_env[key])[:2] == ("postgres-mlflow", key)
    # Written where the server reads it, on a memory-backed emptyDir both mount.
    ini_path = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mount = next(m for m in container["volumeMounts"] if ini_path.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"] is True
    assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory"
    assert any(m["name"] == mount["name"] and m["mountPath"] == mount["mountPath"]
               for m in init["volumeMounts"])

    assert init["command"] == ["/bin/sh", "-c"]
    (script,) = init["args"]
    local_ini = tmp_path / "basic_auth.ini"
    assert script.count(ini_path) == 1
    uri = "postgresql+psycopg2://mlflow:0123abcd@postgres:5432/mlflow"
    done = subprocess.run(
        ["sh", "-c", script.replace(ini_path, str(local_ini))],
        env={"PATH": os.environ.get("PATH", ""), "MLFLOW_AUTH_DATABASE_URI": uri},
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert local_ini.stat().st_mode & 0o077 == 0, oct(local_ini.stat().st_mode)

    for key in AUTH_KEYS[:2]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(local_ini))
    config = mlflow_read_auth_config()()
    assert config.default_permission == "NO_PERMISSIONS"
    assert config.database_uri == uri
    # The admin is not in the file: it comes from the Secret, through the environment.
    assert config.admin_username is None and config.admin_password is None
    assert config.auth_cache_ttl_seconds == 60


def test_probes_hit_health_on_the_server_port(overlay: Rendered) -> None:
    container = server(overlay)
    (port,) = [p for p in container["ports"] if p["name"] == "http"]
    assert port["containerPort"] == 5000
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        # /health is the one path MLflow's auth app and Host check let through unasked.
        assert (get["path"], get["port"]) == ("/health", "http"), probe
        assert "httpHeaders" not in get, f"{probe} sends headers (credentials?)"


def test_pdb_keeps_one_of_two_replicas_through_a_drain(overlay: Rendered) -> None:
    deployment = overlay.one("Deployment", "mlflow")
    pdb = overlay.one("PodDisruptionBudget", "mlflow")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items(), "the PDB does not select the MLflow pods"
    job_labels = overlay.one("Job", JOB)["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= job_labels.items(), "the PDB counts the Job's pod"
    assert pdb["spec"] == {**pdb["spec"], "maxUnavailable": 1}
    assert "minAvailable" not in pdb["spec"]
    assert deployment["spec"]["replicas"] >= 2


# --- who may reach it -----------------------------------------------------------------------


def test_only_the_pipeline_ray_and_the_job_reach_mlflow(overlay: Rendered) -> None:
    (rule,) = overlay.one("NetworkPolicy", "mlflow-ingress")["spec"]["ingress"]
    cluster = overlay.one("RayCluster", "kdflow-ray")["metadata"]["name"]
    job_labels = overlay.one("Job", JOB)["spec"]["template"]["metadata"]["labels"]
    pipeline_ns = read_params()["pipelineNamespace"]
    peers = rule["from"]
    assert {"podSelector": {}} not in peers, "every pod in the namespace is admitted"
    assert peers == [
        {"podSelector": {"matchLabels": {"ray.io/cluster": cluster}}},
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": job_labels[
            "app.kubernetes.io/name"]}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": pipeline_ns}}},
    ]
    assert [p["port"] for p in rule["ports"]] == [5000]


def test_ray_nodes_log_in_as_the_pipeline_user(overlay: Rendered) -> None:
    spec = overlay.one("RayCluster", "kdflow-ray")["spec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        env = env_of(group["template"]["spec"]["containers"][0])
        for key in TRACKING_KEYS:
            assert secret_ref(env[key]) == (PIPELINE_SECRET, key, False), key


# --- the create-user Job --------------------------------------------------------------------


def test_job_creates_the_pipeline_user_as_the_admin(overlay: Rendered) -> None:
    spec = pod_spec(overlay, "Job", JOB)
    (container,) = spec["containers"]
    env = env_of(container)
    assert secret_ref(env["MLFLOW_TRACKING_USERNAME"]) == (
        AUTH_SECRET, "MLFLOW_AUTH_ADMIN_USERNAME", False)
    assert secret_ref(env["MLFLOW_TRACKING_PASSWORD"]) == (
        AUTH_SECRET, "MLFLOW_AUTH_ADMIN_PASSWORD", False)
    assert secret_ref(env["KDFLOW_MLFLOW_USERNAME"]) == (
        PIPELINE_SECRET, "MLFLOW_TRACKING_USERNAME", False)
    assert secret_ref(env["KDFLOW_MLFLOW_PASSWORD"]) == (
        PIPELINE_SECRET, "MLFLOW_TRACKING_PASSWORD", False)
    # It talks to the Service by a name the server's --allowed-hosts lists.
    uri = env["MLFLOW_TRACKING_URI"]["value"]
    (hosts,) = [a for a in server(overlay)["args"] if a.startswith("--allowed-hosts=")]
    assert uri.removeprefix("http://") in hosts.split("=", 1)[1].split(",")
    # It runs the script in the repository, from a ConfigMap kustomize generated from it.
    (script,) = container["command"][1:]
    mount = next(m for m in container["volumeMounts"] if script.startswith(m["mountPath"] + "/"))
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    configmap = overlay.one("ConfigMap", volume["configMap"]["name"])
    source = MANIFESTS / "base" / "mlflow" / Path(script).name
    assert configmap["data"][Path(script).name] == source.read_text()


# --- no credentials in the manifests ---------------------------------------------------------


def test_every_credential_the_auth_parts_read_is_a_secret_ref(overlay: Rendered) -> None:
    names = {("Deployment", "mlflow"), ("Job", JOB), ("RayCluster", "kdflow-ray")}
    checked = 0
    for obj in overlay.objects:
        if (obj["kind"], obj["metadata"]["name"]) not in names:
            continue
        for where, _pod, container in iter_containers(obj):
            for env in container.get("env") or []:
                if CREDENTIAL_NAME.search(env["name"]) or env["name"].endswith("USERNAME"):
                    secret_ref(env)
                    checked += 1
            assert "PASSWORD=" not in " ".join(container.get("args") or []), where
    assert checked >= 10


def test_no_manifest_holds_an_mlflow_password(overlay: Rendered, render) -> None:
    # Neither the rendered overlay nor the templates carry a value for an auth key, and no
    # file under manifests/ writes the admin password into the ini.
    text = yaml.safe_dump_all(overlay.objects)
    assert "admin_password" not in text
    for path in MANIFESTS.rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".yml", ".env", ".ini", ".py"):
            assert "admin_password =" not in path.read_text(), path
    templates = {s["metadata"]["name"]: s for s in render(SECRET_TEMPLATES).of_kind("Secret")}
    assert templates[AUTH_SECRET]["stringData"] == dict.fromkeys(AUTH_KEYS, "")
    assert templates[PIPELINE_SECRET]["stringData"] == dict.fromkeys(TRACKING_KEYS, "")
