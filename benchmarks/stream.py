"""Data that does not fit in memory (issue 18).

    python -m benchmarks.stream [--rows 2000000 20000000] [--cap-gb 5]

Writes benchmarks/results/stream.md with, measured in this one run:

1. The distillation step under a memory cap: at each `--rows`, `run_distillation` with
   `stream_data: on` (one data-parallel worker, two epochs of the student and of its
   baseline, one teacher whose cache is filled by Ray Data batch inference) in a fresh
   process inside a memory cgroup capped at `--cap-gb`, below what the in-memory path
   needs at the largest size. Peak memory is the cgroup's (every process of the step: the
   driver, Ray's daemons, the Train worker, read tasks and actors), anonymous memory plus
   shared memory (Ray's object store), sampled every 0.25 s; the kernel's OOM kills in the
   cgroup are counted. Then the in-memory path (`stream_data: off`) under the same cap at
   the largest size, with the cache already filled: it cannot meet it.
2. The KD step's cost with the streamed cache: the student's epoch time (its rows and the
   ensemble's soft targets streamed) over its baseline's (rows alone), in the same run, in
   epoch 2: epoch 1's student pass also starts the read tasks' worker processes (their
   torch import), which the baseline's pass then reuses.
3. Input throughput: one warm pass of the streamed training split into the loop
   (`kdflow.distill.stream.StreamedEpoch.batches`: Ray Data read tasks, the seeded shuffle
   buffer, step batches of 64 rows as torch tensors) against a bare `pyarrow.dataset`
   scan of the same file (record batches, nothing converted), at the smallest size; the
   first pass's extra time (starting the read tasks' worker processes) beside it.

Data: ROWS × 64 float32 features (Gaussian) and a label from a fixed linear map of them,
written straight as a prepared split in row groups of `prepared.CHUNK_ROWS` rows. The
teacher (`mlp:hidden=128`) is trained on 65,536 rows of the same kind; the student is
`mlp:hidden=64`, batch 1,024.

Ray's object store is set to 512 MiB: Ray sizes it from the memory it sees, and inside a
nested cgroup it sees the machine's (a pod's limit is what Ray reads on a cluster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

RESULTS = Path(__file__).parent / "results" / "stream.md"
FEATURES, CLASSES, BATCH = 64, 10, 64
TEACHER_ROWS = 65_536
STUDENT, TEACHER, STEP_BATCH, EPOCHS = "mlp:hidden=64", "mlp:hidden=128", 1024, 2
OBJECT_STORE_BYTES = 512 * 1024**2


def write_dataset(root: Path, rows: int, seed: int = 0) -> Path:
    """A prepared columns dataset of `rows` training rows, written group by group."""
    from kdflow.data.prepared import CHUNK_ROWS

    folder = root / f"rows-{rows}"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"f{i}" for i in range(FEATURES)]
    schema = pa.schema([*(pa.field(n, pa.float32()) for n in names), ("label", pa.int64())])
    rng = np.random.default_rng(seed)
    weights = np.random.default_rng(1234).standard_normal((FEATURES, CLASSES)).astype(np.float32)

    def table(n: int) -> pa.Table:
        x = rng.standard_normal((n, FEATURES), dtype=np.float32)
        noise = rng.standard_normal((n, CLASSES), dtype=np.float32) * 2.0
        y = (x @ weights + noise).argmax(1).astype(np.int64)
        return pa.table([*(x[:, i] for i in range(FEATURES)), y], schema=schema)

    with pq.ParquetWriter(folder / "train.parquet", schema) as writer:
        for start in range(0, rows, CHUNK_ROWS):
            writer.write_table(table(min(CHUNK_ROWS, rows - start)), row_group_size=CHUNK_ROWS)
    for split in ("val", "test"):
        pq.write_table(table(2_000), folder / f"{split}.parquet")
    meta = {"label_column": "label", "feature_columns": names,
            "classes": [str(c) for c in range(CLASSES)], "input_shape": [FEATURES],
            "sha256": f"generated-{rows}-{seed}",
            "rows": {"train": rows, "val": 2_000, "test": 2_000}, "source": "generated"}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


# ----------------------------------------------------------------------------- memory cap


class MemoryCgroup:
    """A child of this process's memory cgroup (v1) capped at `cap` bytes, for one
    command and everything it starts; None from `make` where cgroups cannot be written."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.peak = 0
        self._stop = threading.Event()

    @classmethod
    def make(cls, cap: int, name: str) -> MemoryCgroup | None:
        mine = [line.strip().split(":", 2) for line in open("/proc/self/cgroup")]
        paths = [p for _, ctl, p in mine if "memory" in ctl.split(",")]
        if not paths:
            return None
        folder = Path("/sys/fs/cgroup/memory") / paths[0].lstrip("/") / name
        try:
            folder.mkdir(exist_ok=True)
            (folder / "memory.limit_in_bytes").write_text(str(cap))
        except OSError:
            return None
        return cls(folder)

    def stat(self) -> dict[str, int]:
        lines = (self.folder / "memory.stat").read_text().split("\n")
        return {k: int(v) for k, v in (line.split() for line in lines if line)}

    def oom_kills(self) -> int:
        for line in (self.folder / "memory.oom_control").read_text().split("\n"):
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def run(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        procs = self.folder / "cgroup.procs"
        # The shell joins the cgroup, then becomes the command: it and all it starts are in.
        joined = ["sh", "-c", f'echo $$ > "{procs}" && exec "$@"', "sh", *command]
        def sample() -> None:
            while not self._stop.is_set():
                s = self.stat()  # anonymous memory + shared memory (the object store)
                self.peak = max(self.peak, s["total_rss"] + s["total_shmem"])
                time.sleep(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        self.peak, before = 0, self.oom_kills()
        self._stop.clear()
        sampler.start()
        try:
            out = subprocess.run(joined, capture_output=True, text=True)
        finally:
            self._stop.set()
            sampler.join()
            self.kill_all()
        out.oom_kills = self.oom_kills() - before  # type: ignore[attr-defined]
        return out

    def kill_all(self) -> None:
        """Ray's daemons can outlive the command by a few seconds: end them."""
        for _ in range(20):
            pids = (self.folder / "cgroup.procs").read_text().split()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            time.sleep(0.25)

    def remove(self) -> None:
        self.kill_all()
        try:
            self.folder.rmdir()
        except OSError:
            pass


# ---------------------------------------------------------------------- the step (child)


def step(dataset: Path, teacher: Path, root: Path, mode: str) -> dict[str, Any]:
    """`run_distillation` on `dataset` as the pipeline's distill step runs it."""
    import ray

    from kdflow.config import DistillConfig
    from kdflow.distill.driver import run_distillation

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
             _temp_dir=os.environ.get("KDFLOW_RAY_TMP"))
    cfg = DistillConfig(student=STUDENT, student_epochs=EPOCHS, student_batch_size=STEP_BATCH,
                        workers=1, max_failures=0, stream_data=mode)
    started = time.perf_counter()
    out = run_distillation(
        str(dataset), [str(teacher)], cfg,
        {"student": str(root / mode / "student"), "baseline": str(root / mode / "baseline")},
        str(root / "store"), f"stream-{mode}", 0,
    )
    seconds = time.perf_counter() - started
    roles = ("student", "baseline")
    return {
        "seconds": seconds, "phases": out.get("seconds", {}),
        "epoch_seconds": {r: [e["seconds"] for e in out[r]["history"]] for r in roles},
        "rows_per_s": {r: [e["rows_per_s"] for e in out[r]["history"]] for r in roles},
        "val_accuracy": {r: out[r]["val_accuracy"] for r in ("student", "baseline")},
        "teacher_val_accuracy": out["teachers"][0].get("val_accuracy"),
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def train_teacher(root: Path) -> Path:
    from kdflow.config import TeacherConfig
    from kdflow.steps import train_teacher as train

    data = write_dataset(root, TEACHER_ROWS, seed=7)
    folder = root / "teacher"
    train(data, TEACHER, TeacherConfig(teachers=[TEACHER], teacher_epochs=5, batch_size=256),
          0, folder)
    return folder


def capped_step(cgroup: MemoryCgroup | None, dataset: Path, teacher: Path, root: Path,
                mode: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.stream", "--step", str(dataset),
               "--teacher", str(teacher), "--root", str(root), "--mode", mode]
    if cgroup is None:
        out = subprocess.run(command, capture_output=True, text=True)
        peak, kills = None, None
    else:
        out = cgroup.run(command)
        peak, kills = cgroup.peak / 2**20, out.oom_kills  # type: ignore[attr-defined]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith('{"seconds"')]
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {
        "failed": (out.stderr.strip().splitlines() or ["(no output)"])[-1][:300]}
    return result | {"exit": out.returncode, "peak_mb": peak, "oom_kills": kills}


# ---------------------------------------------------------------------------- throughput


def throughput(dataset: Path) -> dict[str, Any]:
    """A first and a second pass of the streamed split, and a bare scan (this process)."""
    import pyarrow.dataset as pads
    import ray
    import torch

    from kdflow.data.sources import open_source
    from kdflow.distill import stream

    rows = open_source(str(dataset)).rows("train")
    plans, per_rank = stream.epoch_plan(stream.chunks(str(dataset)), seed=1, world=1)
    reader = stream.ChunkReader(str(dataset), None, None)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
             _temp_dir=os.environ.get("KDFLOW_RAY_TMP"))

    def one_pass(seed: int) -> float:
        epoch = stream.StreamedEpoch(reader, plans[0], per_rank, BATCH, seed, CLASSES)
        started, seen = time.perf_counter(), 0
        for batch in epoch.batches(torch.device("cpu"), kd=False):
            seen += len(batch.y)
        assert seen == rows, (seen, rows)
        return time.perf_counter() - started

    def scan() -> float:
        started, seen = time.perf_counter(), 0
        for batch in pads.dataset(str(dataset / "train.parquet")).to_batches():
            seen += batch.num_rows
        assert seen == rows
        return time.perf_counter() - started

    first = one_pass(1)
    scans, passes = [scan()], [one_pass(2)]
    scans.append(scan())
    passes.append(one_pass(3))
    ray.shutdown()
    streamed, bare = min(passes), min(scans)
    return {"rows": rows, "first_pass_s": first, "pass_s": streamed, "scan_s": bare,
            "streamed_rows_per_s": rows / streamed, "scan_rows_per_s": rows / bare}


# ------------------------------------------------------------------------------- report


def why_not(result: dict[str, Any]) -> str:
    if result.get("oom_kills"):
        return "no: OOM-killed at the cap"
    return "no: " + re.sub(r"\x1b\[[0-9;]*m", "", str(result.get("failed", "")))[:80]


def write(results: dict[str, Any], args: argparse.Namespace) -> str:
    cap = args.cap_gb
    steps, flow = results["steps"], results["throughput"]
    lines = [
        "# Data that does not fit in memory (issue 18)",
        "",
        f"`python -m benchmarks.stream --rows {' '.join(map(str, args.rows))} --cap-gb {cap}` · "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {sys.version.split()[0]}.",
        "",
        f"Data: generated, {FEATURES} float32 features and a label (a fixed linear map of "
        "them plus noise) per row, row groups of 65,536 rows. One teacher "
        f"(`{TEACHER}`, trained on {TEACHER_ROWS:,} rows), student `{STUDENT}`, {EPOCHS} "
        f"epochs of the student and of its baseline at batch {STEP_BATCH:,}, one Ray Train "
        "worker, `--stream-data on`; Ray's object store 512 MiB.",
        "",
        "## The distillation step under a memory cap",
        "",
        f"Each run in a fresh process in a memory cgroup capped at {cap} GiB. Peak memory: "
        "the cgroup's anonymous plus shared memory (every process of the step, Ray's "
        "object store included), sampled every 0.25 s.",
        "",
        "| rows | file (MB) | path | completed | peak memory (MB) | OOM kills | step (s) | "
        "cache fill (s) | student epochs (s) | baseline epochs (s) | KD / plain, epoch 2 | "
        "student val acc | baseline val acc | in memory would hold (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in steps:
        r = s["result"]
        done = r.get("exit") == 0
        ep = r.get("epoch_seconds", {})
        ratio = ep["student"][-1] / ep["baseline"][-1] if done else float("nan")
        times = {r: " / ".join(f"{t:.0f}" for t in ep.get(r, [])) for r in ("student", "baseline")}
        peak = "n/a" if r.get("peak_mb") is None else f"{r['peak_mb']:,.0f}"
        lines.append(
            f"| {s['rows']:,} | {s['file_mb']:,.0f} | {s['mode']} | "
            f"{'yes' if done else why_not(r)} | {peak} | "
            f"{r.get('oom_kills')} | "
            + (f"{r['seconds']:.0f} | {r['phases'].get('teachers', float('nan')):.0f} | "
               f"{times['student']} | {times['baseline']} | {ratio:.2f} | "
               f"{r['val_accuracy']['student']:.3f} | {r['val_accuracy']['baseline']:.3f}"
               if done else "– | – | – | – | – | – | –")
            + f" | {s['rows'] * (FEATURES * 4 + 8 + CLASSES * 4) / 2**20:,.0f} |"
        )
    done = [s for s in steps if s["mode"] == "on" and s["result"].get("exit") == 0]
    if len(done) > 1:
        a, b = done[0], done[-1]
        lines += ["", f"{b['rows']:,} rows / {a['rows']:,} rows ({b['rows'] / a['rows']:.0f}× "
                  f"the rows): peak memory {b['result']['peak_mb'] / a['result']['peak_mb']:.2f}×, "
                  f"step time {b['result']['seconds'] / a['result']['seconds']:.2f}×."]
    lines += [
        "",
        "## Input throughput",
        "",
        f"{flow['rows']:,} rows; the better of two warm passes and of two scans.",
        "",
        "| streamed rows/s | pyarrow.dataset rows/s | stream / scan | warm pass (s) | "
        "first pass (s) |",
        "| --- | --- | --- | --- | --- |",
        f"| {flow['streamed_rows_per_s']:,.0f} | {flow['scan_rows_per_s']:,.0f} | "
        f"{flow['streamed_rows_per_s'] / flow['scan_rows_per_s']:.2f} | {flow['pass_s']:.1f} | "
        f"{flow['first_pass_s']:.1f} |",
        "",
        "```json", json.dumps(results, indent=1), "```",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000_000, 20_000_000])
    parser.add_argument("--cap-gb", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--step", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--teacher", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="on", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(step(args.step, args.teacher, args.root, args.mode)), flush=True)
        return
    cap = int(args.cap_gb * 1024**3)
    cgroup = MemoryCgroup.make(cap, f"kdflow-bench-{os.getpid()}")
    if cgroup is None:
        print("no memory cgroup can be made here: the steps run uncapped", flush=True)
    results: dict[str, Any] = {"cap_gb": args.cap_gb, "steps": []}
    with tempfile.TemporaryDirectory(prefix="kdflow-stream-") as tmp:
        root = Path(tmp)
        os.environ.setdefault("KDFLOW_RAY_TMP", tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        teacher = train_teacher(root)
        try:
            for i, rows in enumerate(sorted(args.rows)):
                dataset = write_dataset(root, rows)
                size = (dataset / "train.parquet").stat().st_size / 2**20
                modes = ["on", "off"] if i == len(args.rows) - 1 else ["on"]
                for mode in modes:
                    result = capped_step(cgroup, dataset, teacher, root / f"run-{rows}", mode)
                    results["steps"].append({"rows": rows, "mode": mode, "file_mb": size,
                                             "result": result})
                    print(json.dumps(results["steps"][-1]), flush=True)
                if i == 0:
                    results["throughput"] = throughput(dataset)
                    print(json.dumps(results["throughput"]), flush=True)
                for f in dataset.iterdir():
                    f.unlink()
        finally:
            if cgroup is not None:
                cgroup.remove()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(write(results, args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
