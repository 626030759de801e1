"""Cluster mode against a real Ray cluster: a head and a second node on 127.0.0.1.

The distill step stages its inputs to shared storage, submits a Ray job to the head's
dashboard and follows it. Each node has one CPU, so two Ray Train workers means one per
node. The cluster runs with token authentication (Ray's default for new clusters) from
this test's own token, and is stopped by process group, never with `ray stop`, which would
stop every Ray on the machine.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


STARTUP_S = 180  # the dashboard takes ~60 s to answer on a busy 2-core machine


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _node_ports() -> list[str]:
    agent, agent_grpc, metrics, runtime_env, manager, objects = _free_ports(6)
    return [
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--node-manager-port={manager}",
        f"--object-manager-port={objects}",
    ]


def _stop(process: subprocess.Popen) -> None:
    """Stop a `ray start --block` and everything it started (its own process group)."""
    for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    # `ray start` has exited; kill whatever of its group is left (raylet, workers).
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_for_nodes(address: str, count: int, processes: list[subprocess.Popen], log: Path):
    """Until `count` nodes are ALIVE, asked over the dashboard's state API with the token.

    Over HTTP with the token as a header, as kdflow sends it: Ray's own clients in this
    process read RAY_AUTH_MODE once, at `import ray`, before the fixture set it.
    """
    import requests

    headers = {"Authorization": f"Bearer {os.environ['RAY_AUTH_TOKEN']}"}
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            pytest.fail(f"a Ray node exited during startup:\n{log.read_text()[-3000:]}")
        try:
            answer = requests.get(f"{address}/api/v0/nodes", headers=headers, timeout=10)
            if answer.ok:
                nodes = answer.json()["data"]["result"]["result"]
                if sum(n.get("state") == "ALIVE" for n in nodes) >= count:
                    return
        except (requests.RequestException, ValueError, KeyError):
            pass  # the dashboard is not up yet
        time.sleep(2)
    pytest.fail(f"{count} Ray nodes not up after {STARTUP_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """`ray start --head` plus one `ray start --address=...` node; yields the dashboard URL."""
    temp = Path(tempfile.mkdtemp(prefix="rayc-", dir="/tmp"))  # short: socket path limit
    log = temp / "nodes.log"
    gcs, dashboard, client = _free_ports(3)
    import ray

    ray_cli = str(Path(sys.executable).parent / "ray")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "token")
        env.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        # The job's entry point is `python -m kdflow.distill.cluster`: this environment's python.
        env.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        env.delenv("RAY_ADDRESS", raising=False)
        # An in-process Ray from earlier tests would talk to its own cluster with this
        # test's token: stop it (later tests start it again) and forget its token.
        ray.shutdown()
        _reset_auth_token_cache()
        common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                  "--disable-usage-stats"]
        processes: list[subprocess.Popen] = []
        with log.open("w") as out:
            try:
                processes.append(subprocess.Popen(
                    [ray_cli, "start", "--head", *common, f"--port={gcs}",
                     "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
                     f"--temp-dir={temp}", *_node_ports()],
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                ))
                address = f"http://127.0.0.1:{dashboard}"
                _wait_for_nodes(address, 1, processes, log)
                processes.append(subprocess.Popen(
                    [ray_cli, "start", *common, f"--address=127.0.0.1:{gcs}", *_node_ports()],
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                ))
                _wait_for_nodes(address, 2, processes, log)
                yield address
            finally:
                for process in reversed(processes):
                    _stop(process)
                shutil.rmtree(temp, ignore_errors=True)
    _reset_auth_token_cache()  # a later in-process Ray uses its own token again


def _reset_auth_token_cache() -> None:
    """Ray caches the auth token once per process; make it read the environment again."""
    from ray._raylet import AuthenticationTokenLoader

    AuthenticationTokenLoader.instance().reset_cache()


def test_distill_runs_as_a_ray_job_on_a_two_node_cluster(
    ray_cluster, digits_dataset, small_teachers, tmp_path, caplog
):
    from ray.job_submission import JobSubmissionClient

    from kdflow.config import DistillConfig
    from kdflow.distill.cluster import find_auth_token
    from kdflow.distill.run import distill

    cfg = DistillConfig(
        student_epochs=2, workers=2, ray_address=ray_cluster, storage_path=str(tmp_path / "nfs")
    )
    with caplog.at_level(logging.INFO, logger="kdflow.distill.cluster"):
        result = distill(
            digits_dataset,
            small_teachers,
            cfg,
            tmp_path / "student",
            tmp_path / "baseline",
            tmp_path / "work",
            "cluster-run",
            seed=0,
        )
    assert result["student"]["epochs"] == 2
    for role in ("student", "baseline"):
        assert (tmp_path / role / "model.safetensors").is_file()
    streamed = [r.getMessage() for r in caplog.records if r.name == "kdflow.distill.cluster"]
    assert any("distillation finished" in line for line in streamed), "the job's log streams"
    jobs = JobSubmissionClient(ray_cluster, headers=find_auth_token().headers()).list_jobs()
    runs = [j for j in jobs if (j.metadata or {}).get("kdflow_run") == "cluster-run"]
    assert [str(j.status.value) for j in runs] == ["SUCCEEDED"]
    # The job read its inputs from, and wrote its checkpoints to, the shared storage.
    assert (tmp_path / "nfs" / "jobs" / "cluster-run" / "inputs" / "dataset").is_dir()
    assert list((tmp_path / "nfs" / "ray" / "cluster-run").glob("checkpoint_*"))


def test_failed_job_fails_the_step_with_the_job_id_and_its_last_log_lines(
    ray_cluster, digits_dataset, small_teachers, tmp_path
):
    from kdflow.config import DistillConfig
    from kdflow.distill.run import distill
    from kdflow.errors import KdflowError

    tampered = tmp_path / "tampered-teacher"
    shutil.copytree(small_teachers[0], tampered)
    weights = bytearray((tampered / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    (tampered / "model.safetensors").write_bytes(bytes(weights))
    cfg = DistillConfig(
        student_epochs=1, ray_address=ray_cluster, storage_path=str(tmp_path / "nfs")
    )
    with pytest.raises(KdflowError) as info:
        distill(
            digits_dataset,
            [tampered],
            cfg,
            tmp_path / "student",
            tmp_path / "baseline",
            tmp_path / "work",
            "cluster-fail",
            seed=0,
        )
    message = str(info.value)
    assert re.match(rf"Ray job kdflow-cluster-fail-\w+ on {ray_cluster} failed", message)
    assert "modified after saving" in message.split("last log lines:", 1)[1]
    assert not (tmp_path / "student").exists()


# --- token authentication, as `kdflow run --ray-address` meets it -------------------------------

_CONNECT = """
import sys
from kdflow.distill.cluster import _client, follow
from kdflow.errors import KdflowError
try:
    client = _client(sys.argv[1])
except KdflowError as exc:
    print(exc, file=sys.stderr)
    sys.exit(3)
if sys.argv[2:] == ["job"]:  # submit, stream the log over the websocket, poll the status
    job = client.submit_job(entrypoint="python -c 'print(6 * 7)'")
    print(follow(client, job, poll_s=0.5))
    print(client.get_job_logs(job))
else:
    print(len(client.list_jobs()))
"""


def _connect_in_a_fresh_process(
    address: str, home: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """kdflow's client in a new process, as a CLI run makes it: no RAY_AUTH_MODE (which Ray
    reads once, at import), HOME without ~/.ray, and only the token variables in `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    return subprocess.run(
        [sys.executable, "-c", _CONNECT, address, *args],
        env=clean | {"HOME": str(home)} | env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_token_is_found_and_sent_without_ray_auth_mode(ray_cluster, tmp_path) -> None:
    mounted = tmp_path / "secret" / "token"  # as a Secret mounted as a file
    mounted.parent.mkdir()
    mounted.write_text(os.environ["RAY_AUTH_TOKEN"] + "\n")
    done = _connect_in_a_fresh_process(
        ray_cluster, tmp_path, "job", RAY_AUTH_TOKEN_PATH=str(mounted)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    status, *logs = done.stdout.splitlines()
    assert status == "SUCCEEDED" and "42" in logs, done.stdout
    assert "log stream" not in done.stderr, "the websocket refused the token"


def test_a_missing_or_refused_token_fails_in_one_line(ray_cluster, tmp_path) -> None:
    missing = _connect_in_a_fresh_process(ray_cluster, tmp_path)
    assert missing.returncode == 3, missing.stderr[-2000:]
    assert missing.stderr.strip().splitlines()[-1] == (
        f"--ray-address {ray_cluster}: the Ray cluster requires a token; set RAY_AUTH_TOKEN, "
        "or RAY_AUTH_TOKEN_PATH to a file holding it (on Kubeflow: the kdflow-ray Secret)"
    )
    wrong = secrets.token_hex(32)
    refused = _connect_in_a_fresh_process(ray_cluster, tmp_path, RAY_AUTH_TOKEN=wrong)
    assert refused.returncode == 3, refused.stderr[-2000:]
    assert refused.stderr.strip().splitlines()[-1].startswith(
        f"--ray-address {ray_cluster}: the Ray cluster refused the token from RAY_AUTH_TOKEN; "
    )
    assert wrong not in refused.stdout + refused.stderr
