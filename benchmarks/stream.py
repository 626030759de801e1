"""The streamed training input (issue 18): `python -m benchmarks.stream [--rows 2000000 20000000]`.

Writes benchmarks/results/stream.md with, measured in this one run:

1. Input throughput: one pass of the streamed training split into the loop
   (`kdflow.distill.stream.StreamedEpoch.batches`: Ray Data read tasks, the seeded shuffle
   buffer, step batches of 64 rows as torch tensors) against a bare `pyarrow.dataset`
   scan of the same files (record batches, nothing converted), rows/s each.
2. Peak memory: the same pass in a fresh process per size (its peak RSS, `ru_maxrss`,
   and the Ray Data workers' beside it), at each `--rows`: streamed, it should not grow
   with the rows; the in-memory path (`stream_data: off`) holds rows × 260 bytes.

Data: ROWS × 64 float32 features and an int64 label (Gaussian), written straight as a
prepared split in row groups of `prepared.CHUNK_ROWS` rows; no teacher, no model: this
measures the data plane alone (the KD step's cost with the streamed cache is the loop's).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

RESULTS = Path(__file__).parent / "results" / "stream.md"
FEATURES, CLASSES, BATCH = 64, 10, 64


def write_dataset(root: Path, rows: int, seed: int = 0) -> Path:
    """A prepared columns dataset of `rows` training rows, written group by group."""
    from kdflow.data.prepared import CHUNK_ROWS

    folder = root / f"rows-{rows}"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"f{i}" for i in range(FEATURES)]
    schema = pa.schema([*(pa.field(n, pa.float32()) for n in names), ("label", pa.int64())])
    rng = np.random.default_rng(seed)

    def table(n: int) -> pa.Table:
        x = rng.standard_normal((n, FEATURES), dtype=np.float32)
        y = rng.integers(0, CLASSES, n)
        return pa.table([*(x[:, i] for i in range(FEATURES)), y], schema=schema)

    with pq.ParquetWriter(folder / "train.parquet", schema) as writer:
        for start in range(0, rows, CHUNK_ROWS):
            writer.write_table(table(min(CHUNK_ROWS, rows - start)), row_group_size=CHUNK_ROWS)
    for split in ("val", "test"):
        pq.write_table(table(2_000), folder / f"{split}.parquet")
    meta = {"label_column": "label", "feature_columns": names,
            "classes": [str(c) for c in range(CLASSES)], "input_shape": [FEATURES],
            "sha256": "generated", "rows": {"train": rows, "val": 2_000, "test": 2_000},
            "source": "generated"}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def streamed_pass(dataset: Path) -> dict[str, Any]:
    """One epoch of the streamed split, as the loop takes it (rank 0 of 1)."""
    import ray
    import torch

    from kdflow.data.sources import open_source
    from kdflow.distill import stream

    rows = open_source(str(dataset)).rows("train")
    plans, per_rank = stream.epoch_plan(stream.chunks(str(dataset)), seed=1, world=1)
    reader = stream.ChunkReader(str(dataset), None, None)
    epoch = stream.StreamedEpoch(reader, plans[0], per_rank, BATCH, seed=1, n_classes=CLASSES)
    ray.init(num_cpus=2, include_dashboard=False)  # not timed: a run's Ray is up already
    started, seen, checksum = time.perf_counter(), 0, 0.0
    for batch in epoch.batches(torch.device("cpu"), kd=False):
        seen += len(batch.y)
        checksum += float(batch.x[0, 0])
    seconds = time.perf_counter() - started
    assert seen == rows, (seen, rows)
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def arrow_scan(dataset: Path) -> dict[str, Any]:
    import pyarrow.dataset as pads

    started, seen = time.perf_counter(), 0
    for batch in pads.dataset(str(dataset / "train.parquet")).to_batches():
        seen += batch.num_rows
    seconds = time.perf_counter() - started
    return {"rows": seen, "seconds": seconds, "rows_per_s": seen / seconds}


def in_fresh_process(dataset: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.stream", "--one-pass", str(dataset)],
        capture_output=True, text=True, check=True,
    )
    # Ray writes to stdout too: the result is the last line that is a JSON object.
    line = [ln for ln in out.stdout.splitlines() if ln.startswith('{"rows"')][-1]
    result: dict[str, Any] = json.loads(line)
    return result


def write(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# Streamed training input (issue 18)",
        "",
        f"`python -m benchmarks.stream --rows {' '.join(map(str, args.rows))}` · "
        f"{platform.processor() or platform.machine()}, Python {sys.version.split()[0]}.",
        "",
        f"Data: generated, {FEATURES} float32 features and an int64 label per row, "
        "row groups of 65,536 rows; one pass at batch 64, each size in a fresh process.",
        "",
        "| rows | file (MB) | streamed rows/s | pyarrow.dataset rows/s | stream / scan | "
        "pass (s) | peak RSS (MB) | Ray workers' peak RSS (MB) | in memory would hold (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        s, a = r["streamed"], r["scan"]
        lines.append(
            f"| {r['rows']:,} | {r['file_mb']:.0f} | {s['rows_per_s']:,.0f} | "
            f"{a['rows_per_s']:,.0f} | {s['rows_per_s'] / a['rows_per_s']:.2f} | "
            f"{s['seconds']:.1f} | {s['peak_rss_mb']:.0f} | {s['workers_peak_rss_mb']:.0f} | "
            f"{r['rows'] * (FEATURES * 4 + 8) / 2**20:.0f} |"
        )
    if len(results) > 1:
        first, last = results[0]["streamed"], results[-1]["streamed"]
        lines += ["", f"Peak RSS {last['rows']:,} rows / {first['rows']:,} rows: "
                  f"{last['peak_rss_mb'] / first['peak_rss_mb']:.2f}× for "
                  f"{last['rows'] / first['rows']:.0f}× the rows; pass time "
                  f"{last['seconds'] / first['seconds']:.2f}×."]
    lines += ["", "```json", json.dumps(results, indent=1), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000_000, 20_000_000])
    parser.add_argument("--one-pass", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.one_pass:
        print(json.dumps(streamed_pass(args.one_pass)))
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="kdflow-stream-") as tmp:
        for rows in args.rows:
            dataset = write_dataset(Path(tmp), rows)
            scan = arrow_scan(dataset)
            streamed = in_fresh_process(dataset)
            results.append({"rows": rows, "streamed": streamed, "scan": scan,
                            "file_mb": (dataset / "train.parquet").stat().st_size / 2**20})
            print(json.dumps(results[-1]), flush=True)
            for f in dataset.iterdir():
                f.unlink()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(write(results, args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
