"""Real servers for integration tests: moto's S3, PostgreSQL databases, `mlflow server`.

Each binds 127.0.0.1 on a free port, is waited for until healthy, and is stopped by its
process id (the MLflow server runs in its own process group, so its workers go with it).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
PG_HOST, PG_PORT = "127.0.0.1", 5432
# ~15 s on an idle machine; minutes when the machine is shared and busy. The first request
# is slow too (the app finishes importing), so each probe may take a while.
MLFLOW_START_TIMEOUT_S = 300.0
PROBE_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------- S3 (moto)


@dataclass
class Faults:
    """S3 errors the server gives on purpose: the next `left` GET requests for an object
    whose key ends with `suffix` get `503 SlowDown`, the throttling error every AWS SDK
    retries (pyarrow's too), as a busy bucket answers."""

    suffix: str = ""
    left: int = 0
    served: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def arm(self, suffix: str, times: int) -> None:
        with self.lock:
            self.suffix, self.left, self.served = suffix, times, 0

    def take(self, method: str, path: str) -> bool:
        with self.lock:
            if self.left <= 0 or method != "GET" or not path.endswith(self.suffix):
                return False
            self.left -= 1
            self.served += 1
            return True


def _faulty(app: Any, faults: Faults) -> Any:
    """`app` (moto's WSGI app) answering `faults` first."""
    body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")

    def serve(environ: dict[str, Any], start_response: Any) -> Any:
        if faults.take(environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")):
            start_response("503 Slow Down", [("Content-Type", "application/xml"),
                                             ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)

    return serve


@dataclass
class S3:
    endpoint: str
    bucket: str
    faults: Faults = field(default_factory=Faults)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **_boto_credentials())

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


@contextmanager
def moto_s3(bucket: str = "mlflow") -> Iterator[S3]:
    """moto's standalone S3 server in a thread of this process, with one bucket, and a
    switch for S3 errors (`S3.faults`)."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request
    faults = Faults()
    # moto's ThreadedMotoServer, with the fault switch in front of its app.
    server = make_server("127.0.0.1", 0, _faulty(DomainDispatcherApplication(create_backend_app),
                                                 faults),
                         threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        s3 = S3(f"http://127.0.0.1:{server.server_address[1]}", bucket, faults)
        s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        server.shutdown()
        thread.join()


# ------------------------------------------------------------------------------ PostgreSQL


def postgres_reachable() -> str | None:
    """None when PostgreSQL answers at 127.0.0.1:5432 as `postgres`, else the reason."""
    try:
        import psycopg2
    except ImportError:
        return "psycopg2 is not installed"
    try:
        psycopg2.connect(
            host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres", connect_timeout=3
        ).close()
    except psycopg2.OperationalError as exc:
        return (
            f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} as user postgres "
            f"({' '.join(str(exc).split())}); `.ci/run` starts Debian's cluster"
        )
    return None


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database for this test session; yields its SQLAlchemy URI, drops it after."""
    import psycopg2

    name = f"kdflow_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+psycopg2://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


# ---------------------------------------------------------------------------- MLflow server


CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
"""A client's MLflow credentials: never a server's environment."""


@dataclass
class MlflowServer:
    """`mlflow server` with artifacts proxied to S3; start, kill, restart, stop by pid."""

    backend_uri: str
    s3: S3
    log_dir: Path
    port: int = field(default_factory=free_port)
    workers: int = 1
    process: subprocess.Popen | None = None
    starts: int = 0
    app_name: str | None = None
    """`--app-name` (`basic-auth`: MLflow's login and permissions)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    """More of the server's environment (the auth app's admin and ini)."""

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        """Launch and wait until healthy (about 15 s on an idle machine)."""
        self.launch()
        self.wait_healthy()
        return self

    def launch(self) -> MlflowServer:
        """Start the process without waiting: launch several, then wait for each."""
        env = {
            **os.environ,
            **S3_ENV,
            "MLFLOW_S3_ENDPOINT_URL": self.s3.endpoint,
            # MLflow 3's job runner (GenAI jobs) starts ~8 more Python processes per server;
            # the registry does not use it, and on a small machine it triples start-up time.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            **self.extra_env,
        }
        # A client's settings are not the server's (its credentials least of all).
        for name in ("MLFLOW_TRACKING_URI", *CREDENTIALS):
            env.pop(name, None)
        self.starts += 1
        log = (self.log_dir / f"mlflow-server-{self.port}-{self.starts}.log").open("w")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server",
                *(["--app-name", self.app_name] if self.app_name else []),
                "--backend-store-uri", self.backend_uri,
                "--artifacts-destination", f"s3://{self.s3.bucket}/mlartifacts",
                "--serve-artifacts",
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--workers", str(self.workers),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: its workers die with it
        )
        log.close()
        return self

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + MLFLOW_START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(
                    f"{self.uri}/health", timeout=PROBE_TIMEOUT_S
                ) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {MLFLOW_START_TIMEOUT_S:.0f} s")

    def log_tail(self, lines: int = 40) -> str:
        logs = sorted(self.log_dir.glob(f"mlflow-server-{self.port}-*.log"))
        return "\n".join(logs[-1].read_text().splitlines()[-lines:]) if logs else ""

    def kill(self) -> None:
        """SIGKILL the server and its workers at once: an outage, not a shutdown."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=5)  # nothing to flush: every request has committed
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=20)
        self.process = None
