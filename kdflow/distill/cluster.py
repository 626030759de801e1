"""Cluster mode: the distill step as a Ray job on a running Ray cluster.

The step stages its inputs (the dataset and teacher folders) to the shared storage, writes
a job spec next to them and submits `python -m kdflow.distill.cluster --spec URI` to the cluster's
dashboard with `JobSubmissionClient`. On the cluster the job runs
`kdflow.distill.driver.run_distillation`, the code local mode runs in-process, and writes the
models and a result file to the storage; the step streams the job's log into its own and
copies the models into its output artifacts. A failed or stopped job fails the step with
the job id and the job's last log lines.

A KFP retry of the step submits again under the same run name, so Ray Train resumes from
the checkpoints on the storage; if the earlier job is still running, the step follows it
instead of starting a second one. The cluster needs kdflow installed (the component image
is the Ray image) and its own storage credentials: only the S3 endpoint and region travel
with the job, never keys.

A cluster with Ray's token authentication (Ray's default for new clusters; KubeRay's
`authOptions`) gets the token where Ray's own clients find it (`find_auth_token`), sent as
`Authorization: Bearer ...` on every request, whether or not `RAY_AUTH_MODE=token` is set here.
The token is never logged; messages name only where it came from.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import shlex
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kdflow.config import DistillConfig
from kdflow.data import storage
from kdflow.errors import KdflowError

log = logging.getLogger(__name__)

JOBS_FOLDER = "jobs"
PROPAGATED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")
"""Variables the job inherits from the step: where S3 is, never the credentials."""
LOG_LINES_ON_FAILURE = 30


def job_root(storage_root: str, run_name: str) -> str:
    return storage.join(storage_root, JOBS_FOLDER, _safe(run_name))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"


def stage_inputs(dataset_uri: str, teacher_uris: list[str], root: str) -> tuple[str, list[str]]:
    """Copy the dataset and teacher folders under `root/inputs` on the shared storage."""
    dataset = storage.join(root, "inputs", "dataset")
    with storage.local_dir(dataset_uri) as folder:
        storage.upload_dir(folder, dataset)
    teachers = []
    for i, uri in enumerate(teacher_uris):
        target = storage.join(root, "inputs", f"teacher-{i}")
        with storage.local_dir(uri) as folder:
            storage.upload_dir(folder, target)
        teachers.append(target)
    return dataset, teachers


def job_env() -> dict[str, str]:
    """Environment of the job's driver: Ray Train's fast report tick, where S3 is."""
    env = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    env |= {k: os.environ[k] for k in PROPAGATED_ENV if os.environ.get(k)}
    return env


TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
KUBEFLOW_SECRET = "kdflow-ray"
"""On Kubeflow, the Secret that holds the Ray cluster's token (manifests/base/ray)."""


@dataclass(frozen=True)
class AuthToken:
    """A Ray auth token and where it was found; `repr` and `str` never show the value."""

    value: str = field(repr=False)
    source: str
    """Where it came from, for messages: a variable's name or a file's path, never the value."""

    def __str__(self) -> str:
        return self.source

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"}


def _first_line(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    return text.splitlines()[0].strip() if text else ""


def find_auth_token() -> AuthToken | None:
    """The Ray auth token where Ray's own clients look for it, in Ray's order.

    As Ray's AuthenticationTokenLoader (src/ray/rpc/authentication/authentication_token_loader.cc):
    `$RAY_AUTH_TOKEN`; else the first line of the file `$RAY_AUTH_TOKEN_PATH` names (set but
    missing or empty is an error, as in Ray); else the first line of `~/.ray/auth_token`.
    Surrounding whitespace is dropped. None when there is none, or when `RAY_AUTH_MODE=disabled`.
    """
    if os.environ.get(AUTH_MODE_ENV, "").strip().lower() == "disabled":
        return None
    value = os.environ.get(TOKEN_ENV, "").strip()
    if value:
        return AuthToken(value, TOKEN_ENV)
    path_str = os.environ.get(TOKEN_PATH_ENV, "")
    if path_str:
        path = Path(path_str).expanduser()
        value = _first_line(path)
        if not value:
            raise KdflowError(
                f"{TOKEN_PATH_ENV} is {path_str}, but that file is missing, unreadable or empty: "
                "point it at a file holding the Ray cluster's token"
            )
        return AuthToken(value, f"{TOKEN_PATH_ENV} ({path})")
    default = Path.home() / ".ray" / "auth_token"
    value = _first_line(default)
    return AuthToken(value, str(default)) if value else None


def _client(address: str) -> Any:
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        token = find_auth_token()
    except KdflowError as exc:
        raise KdflowError(f"--ray-address {address}: {exc}") from None
    if token is not None:
        log.info("Ray auth token from %s", token.source)
    try:
        # Explicit headers: Ray's client adds the token itself only when RAY_AUTH_MODE=token.
        return JobSubmissionClient(address, headers=token.headers() if token else None)
    except AuthenticationError:
        raise _auth_error(address, token) from None
    except Exception as exc:  # ConnectionError, or Ray's own when the dashboard is down
        raise KdflowError(
            f"--ray-address {address}: cannot reach the Ray dashboard ({exc}); give the "
            "cluster's dashboard URL, e.g. http://raycluster-head-svc:8265"
        ) from exc


def _auth_error(address: str, token: AuthToken | None) -> KdflowError:
    """One line for the dashboard's 401 or 403: what to set. Never the token, nor Ray's
    several lines of advice about settings kdflow does not need."""
    if token is None:
        disabled = os.environ.get(AUTH_MODE_ENV, "").strip().lower() == "disabled"
        return KdflowError(
            f"--ray-address {address}: the Ray cluster requires a token; set {TOKEN_ENV}, or "
            f"{TOKEN_PATH_ENV} to a file holding it (on Kubeflow: the {KUBEFLOW_SECRET} Secret)"
            + (f"; and unset {AUTH_MODE_ENV}=disabled" if disabled else "")
        )
    return KdflowError(
        f"--ray-address {address}: the Ray cluster refused the token from {token.source}; set "
        f"{TOKEN_ENV}, or {TOKEN_PATH_ENV} to a file holding the cluster's own token "
        f"(on Kubeflow: the {KUBEFLOW_SECRET} Secret)"
    )


def _running_job(client: Any, run_name: str) -> str | None:
    """A job of this run that is still pending or running (a retried step follows it)."""
    from ray.job_submission import JobStatus

    for job in client.list_jobs():
        if (job.metadata or {}).get("kdflow_run") == run_name and job.status in (
            JobStatus.PENDING,
            JobStatus.RUNNING,
        ):
            return str(job.submission_id)
    return None


def submit_distillation(
    dataset_uri: str,
    teacher_uris: list[str],
    cfg: DistillConfig,
    outputs: dict[str, str],
    run_name: str,
    seed: int,
    fail_at_epoch: int | None = None,
) -> dict[str, Any]:
    """Run the distillation as a Ray job on `cfg.ray_address`; copy its models to `outputs`."""
    assert cfg.ray_address and cfg.storage_path  # DistillConfig checks both
    client = _client(cfg.ray_address)
    root = job_root(cfg.storage_path, run_name)
    dataset, teachers = stage_inputs(dataset_uri, teacher_uris, root)
    spec: dict[str, Any] = {
        "dataset": dataset,
        "teachers": teachers,
        "config": asdict(cfg) | {"ray_address": None},
        "outputs": {role: storage.join(root, "outputs", role) for role in outputs},
        "storage_path": cfg.storage_path,
        "run_name": run_name,
        "seed": seed,
        "fail_at_epoch": fail_at_epoch,
        "result": storage.join(root, "result.json"),
    }
    spec_uri = storage.join(root, "spec.json")
    storage.write_json(spec_uri, spec)
    storage.delete(spec["result"])
    job_id = _running_job(client, run_name)
    if job_id:
        log.info("Ray job %s of run %s is still running: following it", job_id, run_name)
    else:
        job_id = client.submit_job(
            entrypoint=f"python -m kdflow.distill.cluster --spec {shlex.quote(spec_uri)}",
            submission_id=f"kdflow-{_safe(run_name)[:40]}-{uuid.uuid4().hex[:8]}",
            runtime_env={"env_vars": job_env()},
            metadata={"kdflow_run": run_name},
        )
        log.info("submitted Ray job %s to %s", job_id, cfg.ray_address)
    status = follow(client, job_id)
    if status != "SUCCEEDED":
        info = client.get_job_info(job_id)
        lines = (client.get_job_logs(job_id) or "").splitlines()[-LOG_LINES_ON_FAILURE:]
        raise KdflowError(
            f"Ray job {job_id} on {cfg.ray_address} {status.lower()}"
            + (f": {info.message}" if getattr(info, "message", None) else "")
            + "\nlast log lines:\n"
            + "\n".join(lines)
        )
    result: dict[str, Any] = storage.read_json(spec["result"])
    for role, local in outputs.items():
        storage.download_dir(spec["outputs"][role], Path(local))
    return result


def follow(client: Any, job_id: str, poll_s: float = 1.0) -> str:
    """Stream the job's log into this process's log until the job ends; its final status."""
    from ray.job_submission import JobStatus

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            for line in chunk.splitlines():
                log.info("[%s] %s", job_id, line)

    try:
        asyncio.run(tail())
    except Exception as exc:  # a dropped websocket must not lose the job: poll instead
        log.warning("log stream of Ray job %s broke (%s); polling its status", job_id, exc)
    while (status := client.get_job_status(job_id)) not in (
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.STOPPED,
    ):
        time.sleep(poll_s)
    return str(status.value)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the Ray job: `python -m kdflow.distill.cluster --spec URI`."""
    from kdflow.distill.driver import run_distillation

    parser = argparse.ArgumentParser(prog="python -m kdflow.distill.cluster", description=__doc__)
    parser.add_argument("--spec", required=True, help="job spec JSON (a path or s3:// URI)")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        spec = storage.read_json(ns.spec)
        result = run_distillation(
            spec["dataset"],
            spec["teachers"],
            DistillConfig(**spec["config"]),
            spec["outputs"],
            spec["storage_path"],
            spec["run_name"],
            int(spec["seed"]),
            spec.get("fail_at_epoch"),
        )
        storage.write_json(spec["result"], result)
    except KdflowError as exc:
        log.error("%s", exc)
        return 1
    log.info("distillation finished: %s", spec["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
