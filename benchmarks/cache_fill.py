"""Speed of the teacher-cache fill: `python -m benchmarks.cache_fill [--rows 200000]`.

Writes benchmarks/results/cache_fill.md with, measured in this one run on a local Ray:

1. The one-task fill kdflow had before issue 18 (a private copy below: one Ray task of
   one CPU streams the train split through the teacher and writes one safetensors file).
2. The Ray Data fill (`kdflow.distill.cache_fill`, through `teacher_outputs` as the
   distill step calls it) with 1 and 2 CPU actors (`cache_actors`).
3. The teacher alone: `predict_logits` on the same rows in this process, one thread (the
   ceiling of one actor).

Each fill is the whole call a run makes for an uncached teacher (its validation logits,
the train split, the entry written), fresh storage each time, timed wall clock; the
configurations run round-robin, `--repeats` times, and the best time of each is kept.
Data: ROWS x 64 float32 features, 10 classes (Gaussian), one Parquet row group; the
teacher is an untrained `mlp:hidden=1024-1024` (inference costs the same whatever the
weights).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

RESULTS = Path(__file__).parent / "results" / "cache_fill.md"
FEATURES, CLASSES, TEACHER = 64, 10, "mlp:hidden=1024-1024"


def _dataset(root: Path, rows: int) -> Path:
    from kdflow.data.prepared import write_prepared

    rng = np.random.default_rng(0)

    def frame(n: int) -> pd.DataFrame:
        x = rng.standard_normal((n, FEATURES)).astype(np.float32)
        out = pd.DataFrame(x, columns=[f"f{i}" for i in range(FEATURES)])
        out["label"] = rng.integers(0, CLASSES, n)
        return out

    folder = root / "dataset"
    write_prepared(folder, {"train": frame(rows), "val": frame(rows // 100),
                            "test": frame(rows // 100)}, "label", [FEATURES], "bench", "bench")
    return folder


def _teacher(root: Path, dataset: Path) -> Path:
    from kdflow.data.sources import load_meta
    from kdflow.models.artifacts import save_model
    from kdflow.models.zoo import build_classifier

    meta = load_meta(str(dataset))
    torch.manual_seed(0)
    model = build_classifier(TEACHER, [FEATURES], CLASSES, FEATURES)
    save_model(model, root / "teacher", meta.classes, meta.feature_columns)
    return root / "teacher"


def _one_task_fill(dataset_uri: str, teacher_uri: str, cache_uri: str) -> int:
    """kdflow's fill before issue 18 (`_teacher_task` at 5d07981), for classification:
    validation logits, then the train split streamed through the teacher into one array,
    written as one safetensors file. Returns torch's thread count."""
    from kdflow.data.sources import open_source
    from kdflow.distill import cache as teacher_cache
    from kdflow.distill.tasks import task_named
    from kdflow.distill.teachers import _teacher_parts, load_teacher
    from kdflow.models.inference import predict_logits

    source = open_source(dataset_uri)
    task = task_named("classification", None)
    model, _ = load_teacher(teacher_uri, source.meta)
    val_logits = predict_logits(model, source.read("val").x).half().numpy()
    rows = int(source.meta.rows["train"])
    arrays: dict[str, np.ndarray] = {}
    done = 0
    for x in source.stream("train", task.stream_rows):
        for name, t in _teacher_parts(task, model, x, 0).items():
            if name not in arrays:
                arrays[name] = np.empty((rows, *t.shape[1:]), t.numpy().dtype)
            arrays[name][done : done + len(x)] = t.numpy()
        done += len(x)
    meta = {"rows": rows, "classes": source.meta.n_classes, "top_k": 0}
    teacher_cache.write_entry(cache_uri, arrays, val_logits, meta)
    return torch.get_num_threads()


def _fill_before(dataset: Path, teacher: Path, storage: Path) -> tuple[float, dict[str, Any]]:
    import ray

    remote = ray.remote(_one_task_fill).options(num_cpus=1, num_gpus=0)
    started = time.perf_counter()
    threads = ray.get(remote.remote(str(dataset), str(teacher), str(storage / "e.safetensors")))
    return time.perf_counter() - started, {"threads": threads}


def _fill_now(dataset: Path, teacher: Path, storage: Path, actors: int
              ) -> tuple[float, dict[str, Any]]:
    from kdflow.config import DistillConfig
    from kdflow.data.sources import load_meta
    from kdflow.distill import cache as teacher_cache
    from kdflow.distill import cache_fill
    from kdflow.distill.tasks import Classification
    from kdflow.distill.teachers import teacher_outputs

    meta = load_meta(str(dataset))
    shards: list[tuple[float, int]] = []  # (when, rows) of each shard the driver hears of
    add = cache_fill._Progress.add
    cache_fill._Progress.add = lambda self, rows: (shards.append((time.perf_counter(), rows)),
                                                   add(self, rows))[1]
    try:
        started = time.perf_counter()
        (out,) = teacher_outputs(str(dataset), [str(teacher)], meta,
                                 DistillConfig(cache_actors=actors), str(storage), 0,
                                 Classification())
        seconds = time.perf_counter() - started
    finally:
        cache_fill._Progress.add = add
    entry = teacher_cache.open_entry(out.cache or "")
    assert entry is not None and not out.cache_hit
    # Steady state: rows after the first shard over the time after it (actors started,
    # teacher loaded, first block through).
    steady = sum(r for _, r in shards[1:]) / max(shards[-1][0] - shards[0][0], 1e-9)
    return seconds, {"shards": len(entry.meta["shards"]), "steady": steady,
                     "first": shards[0][0] - started}


def _model_only(dataset: Path, teacher: Path) -> float:
    from kdflow.data.prepared import read_split
    from kdflow.data.sources import load_meta
    from kdflow.distill.teachers import load_teacher
    from kdflow.models.inference import predict_logits

    model, _ = load_teacher(str(teacher), load_meta(str(dataset)))
    x = read_split(dataset, "train").x
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        predict_logits(model, x)
        return time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="Training rows.")
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each configuration.")
    ns = parser.parse_args(argv)
    load = os.getloadavg()[0]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from kdflow.distill.runtime import ensure_ray

    root = Path(tempfile.mkdtemp(prefix="kdflow-bench-cache-"))
    try:
        dataset = _dataset(root, ns.rows)
        teacher = _teacher(root, dataset)
        started = time.perf_counter()
        ensure_ray()
        ray_start = time.perf_counter() - started
        cpus = int(ray.cluster_resources().get("CPU", 0))
        configs = {"one task (before)": lambda s: _fill_before(dataset, teacher, s),
                   "Ray Data, 1 actor": lambda s: _fill_now(dataset, teacher, s, 1),
                   "Ray Data, 2 actors": lambda s: _fill_now(dataset, teacher, s, 2)}
        best: dict[str, tuple[float, dict[str, Any]]] = {}
        runs: dict[str, list[float]] = {}
        for r in range(ns.repeats):
            for name, fill in configs.items():
                storage = root / f"storage-{r}-{len(best)}-{name.split()[0]}"
                seconds, info = fill(storage)
                print(f"{name}: {seconds:.2f} s ({ns.rows / seconds:,.0f} rows/s) {info}")
                runs.setdefault(name, []).append(seconds)
                if name not in best or seconds < best[name][0]:
                    best[name] = (seconds, info)
                shutil.rmtree(storage, ignore_errors=True)
        model_seconds = min(_model_only(dataset, teacher) for _ in range(ns.repeats))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    _write(ns, best, runs, model_seconds, cpus, ray_start, load)


def _write(ns: argparse.Namespace, best: dict[str, tuple[float, dict[str, Any]]],
           runs: dict[str, list[float]], model_seconds: float, cpus: int, ray_start: float,
           load: float) -> None:
    rows = ns.rows
    base = best["one task (before)"][0]
    lines = [
        "# Teacher cache fill: Ray Data batch inference",
        "",
        f"`python -m benchmarks.cache_fill --rows {rows} --repeats {ns.repeats}` on "
        f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs, a local Ray "
        f"of {cpus} CPUs started in {ray_start:.1f} s, load average {load:.1f} at the "
        f"start), torch {torch.__version__}. {rows:,} rows x {FEATURES} float32 features, "
        f"{CLASSES} classes, teacher `{TEACHER}` (untrained); full float16 logits. Each "
        "time is the whole fill of an uncached teacher (validation logits, train split, "
        f"entry written), best of {ns.repeats}; ratios are against the one-task fill.",
        "",
        "| fill | seconds | rows/s | ratio | steady rows/s (after the first shard) | "
        "first shard after | notes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, (seconds, info) in best.items():
        notes = (f"torch threads {info['threads']}, one safetensors file" if "threads" in info
                 else f"{info['shards']} Parquet shards")
        steady = f"{info['steady']:,.0f}" if "steady" in info else "n/a"
        first = f"{info['first']:.2f} s" if "first" in info else "n/a"
        lines.append(f"| {name} | {seconds:.2f} | {rows / seconds:,.0f} | "
                     f"{base / seconds:.2f}x | {steady} | {first} | {notes} |")
    lines.append(f"| teacher alone (`predict_logits`, 1 thread, no I/O) | {model_seconds:.2f} | "
                 f"{rows / model_seconds:,.0f} | {base / model_seconds:.2f}x | n/a | n/a | "
                 "the ceiling of one actor |")
    per_actor = best["Ray Data, 1 actor"][1]["steady"]
    two = best["Ray Data, 2 actors"][1]["steady"]
    lines += [
        "",
        "Every run, seconds: " + "; ".join(
            f"{name} {', '.join(f'{t:.1f}' for t in times)}" for name, times in runs.items()
        ) + ".",
        "",
        f"Load average {load:.1f} at the start and {os.getloadavg()[0]:.1f} at the end: "
        "on two cores shared with other work, two actors have less than two cores (a slow "
        "run is actors waiting for CPU to start). "
        f"Steady state, 2 actors do {two / per_actor:.2f}x the rows/s of 1. The fixed cost "
        "of a Ray Data fill (validation task, actor start, teacher load in the actor, "
        "commit) is what separates one actor from the teacher alone; it does not grow "
        "with the rows.",
        "",
        "**On paper, 8 GPUs** (no GPU machine was lent this session, so nothing here ran on "
        "one): the fill is embarrassingly parallel, one actor per GPU, each holding the "
        "teacher once; reads and shard writes are 0-CPU tasks beside them. Throughput is "
        "8 x one actor's rows/s as long as each GPU actor's input keeps up: for this mlp a "
        f"CPU actor does {per_actor:,.0f} rows/s in steady state; a GPU runs a 1024-1024 mlp on "
        "4,096-row batches at millions of rows/s, so per actor the bound becomes Parquet "
        "decode and the object-store copy of 4,096 x 64 float32 (1 MB) per block on that "
        "actor's CPU, and the 8 actors share the node's CPUs and disk or S3 bandwidth. For "
        "ImageNet-size data (1.28 M images, 1,000 classes) a ResNet-50 teacher at ~2,500 "
        "images/s per GPU (bf16) would give ~20,000 images/s on 8 GPUs (~64 s for the "
        "pass, 2.6 GB of float16 logits, 85 MB at top-32, ~310 shards of 4,096 rows), but "
        "not as built: each actor decodes its images itself on its one CPU (Pillow, "
        "~200-300 ImageNet JPEGs/s per core), so an image fill is decode-bound at ~250 "
        "images/s per GPU (~2,000/s on 8) until decoding moves into its own CPU stage "
        "ahead of the actors (~10 cores per GPU to keep one busy). Tabular data (this "
        "table) has no such stage. The fixed cost (actors start, teachers load) is paid "
        "once per teacher and run.",
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
