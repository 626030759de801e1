"""How long registration takes against each MLflow backend.

    python -m benchmarks.registry [--repeat 3]

Starts moto's S3 and `mlflow server` twice (sqlite backend; PostgreSQL backend when
PostgreSQL answers at 127.0.0.1:5432), artifacts proxied to S3 as in the integration tests,
and also uses a plain local sqlite store (no server, files on disk: the local default).
On each it times, for a small student (`mlp:hidden=16`, digits shape): `register_student`
with the pyfunc and ONNX models, `promote`, `rollback` and `list_versions`. The first
registration in a process pays one-off imports, so it is reported apart from the median of
the rest. The table goes to stdout and to benchmarks/results/registry.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import torch

from kdflow.mlflow import promotion, registry, versions
from kdflow.models.artifacts import save_model
from kdflow.models.onnx import export_onnx
from kdflow.models.zoo import build_classifier
from tests.integration.servers import (
    MlflowServer,
    moto_s3,
    postgres_database,
    postgres_reachable,
)

RESULTS = Path(__file__).parent / "results" / "registry.md"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(accuracy: float) -> dict:
    return {
        "dataset": {"sha256": "0" * 64, "passed": True},
        "teachers": [{"spec": "cnn:channels=32-64", "accuracy": 0.98, "params": 1,
                      "latency_ms": 1.0}],
        "ensemble": {"accuracy": 0.98},
        "baseline": {"accuracy": 0.9},
        "student": {"spec": "mlp:hidden=16", "accuracy": accuracy, "params": 1210,
                    "latency_ms": 0.05},
        "champion_seen": None,
        "passed": True,
    }


def measure(uri: str, student: Path, onnx: Path, repeat: int) -> dict[str, float]:
    name = f"bench-{time.time_ns()}"
    times = []
    for i in range(repeat + 1):
        times.append(timed(lambda i=i: registry.register_student(
            student, summary(0.9 + i / 1000), uri, name, True,
            {"kdflow.run_id": f"bench-{i}"}, onnx_path=onnx,
        )))
    return {
        "first": times[0],
        "register": statistics.median(times[1:]),
        "promote": timed(lambda: promotion.promote(uri, name, 1)),
        "rollback": timed(lambda: promotion.rollback(uri, name)),
        "list": timed(lambda: versions.list_versions(uri, name)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="Registrations after the first.")
    ns = parser.parse_args(argv)
    load = os.getloadavg()[0]
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        torch.manual_seed(0)
        model = build_classifier("mlp:hidden=16", [1, 8, 8], 10, 64)
        student = save_model(model, root / "student", [str(i) for i in range(10)],
                             [f"px{i}" for i in range(64)])
        onnx = export_onnx(model, 64, root / "model.onnx")
        s3 = stack.enter_context(moto_s3())
        servers = {"mlflow server, sqlite": MlflowServer(f"sqlite:///{root / 's.db'}", s3, root)}
        if postgres_reachable() is None:
            servers["mlflow server, PostgreSQL"] = MlflowServer(
                stack.enter_context(postgres_database()), s3, root
            )
        startup = {}
        for label, server in servers.items():
            stack.callback(server.stop)
            startup[label] = timed(server.start)
        results["local sqlite store (no server)"] = measure(
            f"sqlite:///{root / 'local.db'}", student, onnx, ns.repeat
        )
        for label, server in servers.items():
            results[label] = measure(server.uri, student, onnx, ns.repeat)
            results[label]["startup"] = startup[label]

    lines = [
        "# Registry: time per operation",
        "",
        f"`python -m benchmarks.registry --repeat {ns.repeat}` on "
        f"{platform.processor() or platform.machine()} ({platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the start); "
        "artifacts of the servers in moto's S3. Seconds; `register` is the median of "
        f"{ns.repeat} registrations (pyfunc + ONNX, alias moves included) after the first.",
        "",
        "| backend | server start | first register | register | promote | rollback | list |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in results.items():
        start = f"{r['startup']:.1f}" if "startup" in r else "–"
        lines.append(
            f"| {label} | {start} | {r['first']:.2f} | {r['register']:.2f} | "
            f"{r['promote']:.2f} | {r['rollback']:.2f} | {r['list']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
