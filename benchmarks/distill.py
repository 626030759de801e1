"""Speed of distillation on Ray: `python -m benchmarks.distill [--rows 60000] [--epochs 20]`.

Writes benchmarks/results/distill.md with, all measured in this one run:

1. KD overhead: one epoch of kdflow's worker loop (the student on the soft targets of 3
   cached teachers) against one epoch of plain training of the same student in a bare
   PyTorch loop, on the same rows, in this process, one thread, interleaved, CPU time.
   The same for online mode (teachers run on every batch), and the one-time cache fill.
2. Framework overhead: the whole distill step (Ray start, teacher-cache lookup, Ray Train
   workers, a checkpoint every epoch, student and baseline) against a bare loop training
   the student (KD) and the baseline for the same epochs, wall clock.
3. Scaling: rows per second with 1 and 2 Ray Train workers.
4. Memory of the teacher cache for N rows x C classes, in full and at top-k.

Data: scikit-learn's make_classification, ROWS x 64 features, 10 classes, split 70/10/20
like a pipeline run. Teachers: the default three CNN specs on 1x8x8 inputs, untrained
(inference costs the same whatever the weights).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

RESULTS = Path(__file__).parent / "results" / "distill.md"
FEATURES, CLASSES = 64, 10


def make_dataset(folder: Path, rows: int) -> Path:
    from sklearn.datasets import make_classification

    from kdflow.data.prepared import frame_sha256, split_frame, write_prepared

    x, y = make_classification(
        n_samples=rows, n_features=FEATURES, n_informative=32, n_classes=CLASSES,
        n_clusters_per_class=2, random_state=0,
    )
    frame = pd.DataFrame(x.astype(np.float32), columns=[f"f{i}" for i in range(FEATURES)])
    frame["label"] = y
    train, test = split_frame(frame, "label", 0.2, seed=0)
    train, val = split_frame(train, "label", 0.125, seed=0)
    write_prepared(folder, {"train": train, "val": val, "test": test}, "label", [1, 8, 8],
                   frame_sha256(frame), "make_classification")
    return folder


def make_teachers(folder: Path, dataset: Path) -> list[Path]:
    from kdflow.config import TeacherConfig
    from kdflow.data.prepared import read_meta, read_split
    from kdflow.models.artifacts import save_model
    from kdflow.models.zoo import build_classifier, resolve_teachers

    meta = read_meta(dataset)
    x = torch.from_numpy(read_split(dataset, "train").x)
    out = []
    for i, spec in enumerate(resolve_teachers(TeacherConfig().teachers, meta.input_shape)):
        torch.manual_seed(i)
        model = build_classifier(spec, meta.input_shape, meta.n_classes, meta.n_features)
        model.set_normalisation(x.mean(0), x.std(0))
        out.append(save_model(model, folder / f"teacher-{i}", meta.classes,
                              meta.feature_columns))
    return out


# ----------------------------------------------------------------------- 1. KD overhead


def bare_epoch(model, opt, x, y, order, batch_size) -> float:
    """Plain training as a bare PyTorch loop is usually written: index a permutation."""
    model.train()
    total = 0.0
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
    return total / len(order)


def bare_steps(model, opt, x, y, steps) -> float:
    """`bare_epoch`'s loop body over given index batches (for interleaved timing)."""
    model.train()
    total = 0.0
    for idx in steps:
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
    return total


def bare_kd_epoch(model, opt, x, y, soft, order, batch_size, temperature, alpha) -> float:
    """KD in the same bare style, with kdflow's reference `kd_loss` (for section 2)."""
    from kdflow.distill.losses import kd_loss

    model.train()
    total = 0.0
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        loss, _, _ = kd_loss(model(x[idx]), y[idx], soft[idx], temperature, alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
    return total / len(order)


def fill_cache(dataset: Path, teachers: list[Path], storage: Path) -> dict[str, Any]:
    """Each teacher's cache entry, filled in this process, one thread; CPU seconds each."""
    from kdflow.data.sources import load_meta
    from kdflow.distill import cache as teacher_cache
    from kdflow.distill.teachers import _teacher_task

    torch.set_num_threads(1)
    meta = load_meta(str(dataset))
    key = teacher_cache.dataset_key(str(dataset))
    fill, caches = [], []
    for t in teachers:
        spec = json.loads((t / "spec.json").read_text())
        entry_meta = {"dataset_key": key, "teacher_sha256": spec["weights_sha256"], "top_k": 0,
                      "rows": int(meta.rows["train"]), "classes": meta.n_classes}
        uri = teacher_cache.entry_uri(str(storage), key, spec["weights_sha256"], 0)
        started = time.thread_time()
        _teacher_task(str(dataset), str(t), "classification", uri, entry_meta)
        fill.append(time.thread_time() - started)
        caches.append(uri)
    return {"fill_s": fill, "caches": caches, "bytes": [os.path.getsize(c) for c in caches]}


def kd_overhead(dataset: Path, teachers: list[Path], caches: list[str], student: str,
                rounds: int, online_rounds: int) -> dict[str, Any]:
    from kdflow.config import DistillConfig
    from kdflow.data.sources import load_meta, load_rows
    from kdflow.distill.loop import BLOCK_BATCHES, WorkerJob, batches, epoch_order, run_epoch
    from kdflow.distill.loop import shard_targets as cached_targets
    from kdflow.distill.step import OnlineTeachers, Role
    from kdflow.distill.targets import Ensemble
    from kdflow.distill.tasks import Classification
    from kdflow.distill.teachers import load_teacher
    from kdflow.models.zoo import build_classifier

    torch.set_num_threads(1)
    cfg = DistillConfig(student=student)
    meta = load_meta(str(dataset))
    rows = int(meta.rows["train"])
    task = Classification()
    ensemble = Ensemble.of(cfg, meta.n_classes, [1 / 3] * 3, top_k=0)
    job = WorkerJob(cfg, str(dataset), [], 0, "", ensemble=ensemble, caches=caches)
    targets = cached_targets(job, task, 0, rows)
    train = load_rows(str(dataset), "train", meta)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    cpu = torch.device("cpu")
    online = OnlineTeachers([load_teacher(str(t), meta)[0].eval() for t in teachers], ensemble,
                            task)

    def fresh(name: str) -> Role:
        torch.manual_seed(0)
        model = build_classifier(student, meta.input_shape, meta.n_classes, meta.n_features)
        model.set_normalisation(x.mean(0), x.std(0))
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.student_lr or 3e-3)
        kd = name in ("kd", "online")
        return Role(name, model, model, optimizer, None, kd=kd, alpha=cfg.alpha if kd else 1.0)

    state = {name: fresh(name) for name in ("bare", "kd", "plain", "online")}
    bs = cfg.student_batch_size
    chunk = BLOCK_BATCHES  # steps per timed chunk: one block gather each for kdflow

    def stream(name: str) -> Iterator[Any]:
        """Endless batches of one variant, epoch after epoch."""
        for epoch in itertools.count():
            order = epoch_order(rows, rows, epoch)
            if name == "bare":
                yield from (order[i : i + bs] for i in range(0, rows, bs))
            else:
                yield from batches(x, y, order, bs, cpu, targets if name == "kd" else None)

    streams = {name: stream(name) for name in state}

    def run(name: str) -> float:
        role = state[name]
        steps = itertools.islice(streams[name], chunk)
        started = time.thread_time()
        if name == "bare":
            bare_steps(role.model, role.optimizer, x, y, steps)
        else:
            run_epoch(role, steps, task, cfg.temperature, cpu,
                      online if name == "online" else None)
        return time.thread_time() - started

    times: dict[str, list[float]] = {name: [] for name in state}
    for r in range(rounds):
        for name in ("bare", "kd", "plain") + (("online",) if r < online_rounds else ()):
            times[name].append(run(name))
    bare = times["bare"]
    steps = -(-rows // bs)
    return {
        "student": student,
        "rows": rows,
        "steps": steps,
        # seconds per epoch, from the median chunk
        "epoch_s": {n: statistics.median(t) * steps / chunk for n, t in times.items()},
        # the median over rounds of (variant / bare) in the same round: drift cancels
        "ratio": {n: statistics.median(v / b for v, b in zip(t, bare, strict=False))
                  for n, t in times.items()},
        "iqr": {n: statistics.quantiles([v / b for v, b in zip(t, bare, strict=False)], n=4)
                for n, t in times.items() if len(t) > 1},
        "rounds": {n: len(t) for n, t in times.items()},
        "targets_bytes": targets.nbytes,
    }


# ----------------------------------------------------------------- 2. framework overhead


def bare_step(dataset: Path, storage: Path, student: str, epochs: int) -> float:
    """Student (KD on the cached targets) and baseline, `epochs` each, bare loops, 1 thread."""
    from kdflow.config import DistillConfig
    from kdflow.data.sources import load_meta, load_rows
    from kdflow.distill.cache import CACHE_FOLDER
    from kdflow.distill.loop import WorkerJob, epoch_order, shard_targets
    from kdflow.distill.targets import Ensemble
    from kdflow.distill.tasks import Classification
    from kdflow.models.zoo import build_classifier

    torch.set_num_threads(1)
    cfg = DistillConfig(student=student)
    meta = load_meta(str(dataset))
    rows = int(meta.rows["train"])
    caches = sorted(str(p) for p in (storage / CACHE_FOLDER).rglob("*.safetensors"))
    started = time.perf_counter()
    ensemble = Ensemble.of(cfg, meta.n_classes, [1 / len(caches)] * len(caches), top_k=0)
    job = WorkerJob(cfg, str(dataset), [], 0, "", ensemble=ensemble, caches=caches)
    soft = shard_targets(job, Classification(), 0, rows).rows()
    train = load_rows(str(dataset), "train", meta)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    roles = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_classifier(student, meta.input_shape, meta.n_classes, meta.n_features)
        model.set_normalisation(x.mean(0), x.std(0))
        roles.append((model, torch.optim.Adam(model.parameters(), lr=cfg.student_lr or 3e-3)))
    for epoch in range(1, epochs + 1):
        order = epoch_order(rows, rows, epoch)
        bare_kd_epoch(*roles[0], x, y, soft, order, cfg.student_batch_size, cfg.temperature,
                      cfg.alpha)
        bare_epoch(*roles[1], x, y, order, cfg.student_batch_size)
    return time.perf_counter() - started


def kdflow_step(dataset: Path, teachers: list[Path], storage: Path, student: str, epochs: int,
                workers: int, name: str) -> tuple[float, dict[str, Any]]:
    """The distill step as the pipeline runs it, Ray start included (a fresh interpreter)."""
    import subprocess

    out = storage.parent / f"out-{name}"
    code = (
        "import json, sys, time; t = time.perf_counter()\n"
        "from pathlib import Path\n"
        "from kdflow.config import DistillConfig\n"
        "from kdflow.steps import distill\n"
        f"cfg = DistillConfig(student={student!r}, student_epochs={epochs}, "
        f"workers={workers}, storage_path={str(storage)!r})\n"
        f"r = distill(Path({str(dataset)!r}), [Path(p) for p in {[str(t) for t in teachers]!r}],"
        f" cfg, 0, Path({str(out / 'student')!r}), Path({str(out / 'baseline')!r}), "
        f"Path({str(out / 'work')!r}), {name!r})\n"
        "r['wall_s'] = time.perf_counter() - t\n"
        "print('RESULT' + json.dumps(r))\n"
    )
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: socket path limit
    env = os.environ | {"KDFLOW_RAY_TMP": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if proc.returncode or not lines:
        raise SystemExit(f"distill step failed:\n{proc.stderr[-3000:]}")
    return wall, json.loads(lines[-1][len("RESULT"):])


# ---------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=60,
                        help="interleaved 64-step chunks per variant")
    parser.add_argument("--online-rounds", type=int, default=10)
    parser.add_argument("--students", nargs="+", default=["mlp:hidden=12", "mlp:hidden=256-256"])
    parser.add_argument("--scaling-epochs", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    ns = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kdflow-bench-"))
    try:
        measure_and_write(ns, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure_and_write(ns: argparse.Namespace, root: Path) -> None:
    from kdflow.config import TeacherConfig
    from kdflow.distill import cache as teacher_cache
    from kdflow.distill.loop import BLOCK_BATCHES
    from kdflow.models.zoo import resolve_teachers

    command = " ".join(["python -m benchmarks.distill", *sys.argv[1:]])
    dataset = make_dataset(root / "dataset", ns.rows)
    teachers = make_teachers(root / "teachers", dataset)
    storage = root / "storage"
    started = time.perf_counter()

    print("filling the teacher cache ...", flush=True)
    cache = fill_cache(dataset, teachers, storage)
    overhead = []
    for student in ns.students:
        print(f"KD overhead, {student} ...", flush=True)
        overhead.append(kd_overhead(dataset, teachers, cache["caches"], student, ns.rounds,
                                    ns.online_rounds))
        print({k: round(v, 3) for k, v in overhead[-1]["ratio"].items()}, flush=True)

    framework = []
    for student in ns.students:
        print(f"framework overhead, {student}, {ns.epochs} epochs ...", flush=True)
        bare_a = bare_step(dataset, storage, student, ns.epochs)
        steps = {}
        for workers in (1, 0):  # Ray Train worker process, then in-process (local mode)
            steps[workers] = kdflow_step(dataset, teachers, storage, student, ns.epochs,
                                         workers, f"bench-{workers}-{student}-{time.time():.0f}")
        bare_b = bare_step(dataset, storage, student, ns.epochs)
        for workers, (wall, result) in steps.items():
            framework.append({"student": student, "workers": workers,
                              "bare": (bare_a + bare_b) / 2, "wall": wall,
                              "step": result["wall_s"], "result": result})
        print(f"bare {bare_a:.1f}/{bare_b:.1f} s, kdflow {steps[1][0]:.1f} s (1 worker), "
              f"{steps[0][0]:.1f} s (in-process)", flush=True)

    scaling = []
    student = ns.students[0]
    for workers in (1, 2):
        print(f"scaling, {workers} worker(s) ...", flush=True)
        _, result = kdflow_step(dataset, teachers, storage, student, ns.scaling_epochs, workers,
                                f"scale-{workers}-{time.time():.0f}")
        per_epoch = [h["rows_per_s"] for h in result["student"]["history"]]
        scaling.append({"workers": workers, "rows_per_s": statistics.median(per_epoch),
                        "training_s": result["seconds"]["training"]})

    rows = overhead[0]["rows"]
    teacher_specs = resolve_teachers(TeacherConfig().teachers, [1, 8, 8])
    lines = [
        "# Distillation on Ray: speed and memory",
        "",
        f"Command: `{command}` (took {time.perf_counter() - started:.0f} s).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs "
        f"(load average {os.getloadavg()[0]:.1f} at the end), torch "
        f"{torch.__version__} CPU, one thread per process. Data: make_classification, "
        f"{ns.rows:,} rows x {FEATURES} features, {CLASSES} classes, {rows:,} training rows. "
        f"Teachers: {', '.join(f'`{s}`' for s in teacher_specs)} "
        "on 1x8x8 inputs, untrained. Batch 64, T=2, Adam.",
        "",
        "## 1. KD overhead (one epoch, CPU time, same process, interleaved)",
        "",
        "`bare` is plain training as a bare loop is usually written (a random permutation, "
        "`x[idx]`, `F.cross_entropy`, Adam, the loss summed with `.item()`). `kdflow KD` is "
        "the loop's epoch (`kdflow.distill.loop.batches` + `run_epoch`) on the ensemble of 3 "
        "cached teachers; `kdflow plain` the same loop for the baseline (hard labels); "
        f"`online` runs the 3 teachers on every batch. The variants take turns in chunks of "
        f"{BLOCK_BATCHES} steps ({ns.rounds} rounds, {ns.online_rounds} for "
        "online); an epoch is the median chunk scaled to the epoch's steps; a ratio is the "
        "median over rounds of the variant's chunk time over `bare`'s in the same round, so "
        "load that drifts during the run cancels out.",
        "",
        "| student | steps/epoch | bare | kdflow KD (3 cached teachers) | kdflow plain | "
        "online KD (3 teachers per batch) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for o in overhead:
        t, r = o["epoch_s"], o["ratio"]
        lines.append(
            f"| `{o['student']}` | {o['steps']} | {t['bare']:.2f} s | {t['kd']:.2f} s "
            f"(**{r['kd']:.2f}x**, IQR {o['iqr']['kd'][0]:.2f}-{o['iqr']['kd'][2]:.2f}) | "
            f"{t['plain']:.2f} s ({r['plain']:.2f}x) | "
            f"{t['online']:.2f} s ({r['online']:.2f}x) |"
        )
    o = overhead[0]
    plain = o["epoch_s"]["bare"]
    lines += [
        "",
        "Filling the cache (once per dataset and teacher, here in-process, one thread): "
        + ", ".join(f"{s:.1f} s" for s in cache["fill_s"])
        + f" for the three teachers, {sum(cache['fill_s']):.1f} s in all = "
        f"{sum(cache['fill_s']) / plain:.1f} plain epochs of `{o['student']}`; in the distill step "
        "the teachers run as parallel Ray tasks, one CPU (or GPU) each, so the wall time is "
        "the slowest teacher's.",
        "",
        f"## 2. Framework overhead ({ns.epochs} epochs, student and baseline, wall clock)",
        "",
        "`kdflow` is the whole distill step in a fresh interpreter: imports, the "
        "teacher-cache lookup (warm: filled in section 1), a checkpoint every epoch, the "
        "models written; with 1 worker also `ray.init` and the Ray Train controller and "
        "worker processes; in-process (`--workers 0`, Ray Train's local mode) none of those. "
        "`bare` trains the same student with KD (kdflow's `kd_loss` on the same cached "
        "targets) and the baseline, the same epochs and batches, in this process (no "
        "imports, no interpreter start), one thread; mean of a run before and one after.",
        "",
        "| student | Ray Train | bare loop | kdflow distill step | ratio | fixed cost | "
        "training phase |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in framework:
        training = f["result"]["seconds"]["training"]
        mode = "1 worker process" if f["workers"] else "in-process (`--workers 0`)"
        lines.append(
            f"| `{f['student']}` | {mode} | {f['bare']:.1f} s | {f['wall']:.1f} s | "
            f"**{f['wall'] / f['bare']:.2f}x** | {f['wall'] - f['bare']:.1f} s | "
            f"{training:.1f} s (Ray start {f['result']['seconds']['ray_start']:.1f} s, "
            f"teachers {f['result']['seconds']['teachers']:.1f} s) |"
        )
    worker = [f for f in framework if f["workers"]]
    lines += [
        "",
        "The fixed cost does not grow with the data; the per-epoch cost is the loop of "
        "section 1 plus a checkpoint and a report. With a worker process it is Python and "
        "Ray start, the Ray Train controller and worker processes importing torch, and "
        "shutdown: the step stays within 1.3x of the bare loop once the bare loop takes "
        f"{max(f['wall'] - f['bare'] for f in worker) / 0.3:.0f} s or more (about the fixed "
        "cost / 0.3). In-process it is the interpreter's imports and the checkpoints.",
        "",
        f"## 3. Scaling (`{ns.students[0]}`, {ns.scaling_epochs} epochs, global batch 64)",
        "",
        "| Ray Train workers | rows/s (student epoch, median) | training phase |",
        "| --- | --- | --- |",
        *(f"| {s['workers']} | {s['rows_per_s']:,.0f} | {s['training_s']:.1f} s |"
          for s in scaling),
        "",
        f"Two workers on a {os.cpu_count()}-core machine that other jobs share split the "
        "same cores; the gradient all-reduce (gloo) runs once per step of 32 rows per worker.",
        "",
        "## 4. Teacher-cache memory",
        "",
        "| | rows | classes | per teacher, full (float16) | per teacher, top-3 | "
        "top-32 |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| measured here | {rows:,} | {CLASSES} | {cache['bytes'][0] / 1e6:.2f} MB file "
        f"| {teacher_cache.entry_bytes(rows, CLASSES, 3) / 1e6:.2f} MB | n/a |",
        f"| ImageNet-1k | 1,281,167 | 1000 | "
        f"{teacher_cache.entry_bytes(1_281_167, 1000) / 1e9:.2f} GB | "
        f"{teacher_cache.entry_bytes(1_281_167, 1000, 3) / 1e6:.0f} MB | "
        f"{teacher_cache.entry_bytes(1_281_167, 1000, 32) / 1e6:.0f} MB |",
        "",
        "Full: N x C x 2 bytes per teacher. Top-k: N x k x (2 + 2) bytes (float16 values, "
        "int16 class indices; int32 past 32,767 classes). The file adds the validation "
        "split's full logits and a JSON header. A worker holds only its shard: the ensemble "
        f"targets as float32 (N/W x C x 4 bytes dense; here {o['targets_bytes'] / 1e6:.1f} MB "
        "with per-row entropies), or at top-k the K x k (probability, class) pairs per row; "
        "a teacher task holds one entry (N x C x 2 or N x k x 4) plus one 64 Ki-row batch.",
        "",
    ]
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
