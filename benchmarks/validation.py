"""Validation cost next to the floor: reading the same Parquet file with pyarrow.

    python -m benchmarks.validation [--rows 10000 100000 1000000] [--features 100] [--repeat 3]

For each size it writes a Parquet file (rows × features float64 + an int label, pyarrow's
default row groups) and measures, each in a fresh Python process so peak memory is that
process's own `ru_maxrss`:

- read: `pyarrow.parquet.read_table` of the whole file (the floor);
- scan: `kdflow.validation.scan.scan_uri`, the exact streaming pass alone;
- gx: importing GX Core alone (a fixed cost, whatever the data);
- validate: `kdflow.validation.checks.validate_dataset` with the default contract (scan, GX Core
  suite on the sample, findings), GX import included: it runs in a thread while the scan
  reads the file.

The table goes to stdout and to benchmarks/results/validation.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

RESULTS = Path(__file__).parent / "results" / "validation.md"
KINDS = ("read", "scan", "gx", "validate")


def child(kind: str, path: str) -> dict[str, float]:
    """One measurement, run inside a fresh interpreter (`--child KIND PATH`)."""
    extra: dict[str, float] = {}
    if kind == "read":
        import pyarrow.dataset  # noqa: F401 - read_table imports it on first use: not reading

        start, cpu_start = time.perf_counter(), _cpu_seconds()
        pq.read_table(path)
    elif kind == "scan":
        from kdflow.validation.scan import scan_uri

        start, cpu_start = time.perf_counter(), _cpu_seconds()
        scan_uri(path, "label")
    elif kind == "gx":
        os.environ["GX_ANALYTICS_ENABLED"] = "false"
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        import great_expectations.expectations  # noqa: F401
    else:
        from kdflow.validation.checks import validate_dataset
        from kdflow.validation.contract import default_contract

        os.environ["GX_ANALYTICS_ENABLED"] = "false"
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        report = validate_dataset(path, None, default_contract("label"))
        extra["gx_rows"] = report.statistics["train"]["gx_rows"]
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "cpu_s": _cpu_seconds() - cpu_start, "peak_mb": peak_mb, **extra}


def _cpu_seconds() -> float:
    """User + system CPU time of this process: what the work costs, whatever else runs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_dataset(path: Path, rows: int, features: int, seed: int = 0) -> None:
    """rows × features standard-normal float64 columns and a 10-class label, in 100k chunks."""
    rng = np.random.default_rng(seed)
    names = [f"f{i}" for i in range(features)]
    schema = pa.schema([(n, pa.float64()) for n in names] + [("label", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            values = rng.normal(size=(n, features))
            columns = [pa.array(values[:, i]) for i in range(features)]
            columns.append(pa.array(rng.integers(0, 10, n)))
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def drop_page_cache() -> None:
    """Make the next read come from disk (Linux, root)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        raise SystemExit(f"--cold needs root to drop the page cache: {exc}") from exc


def measure(kind: str, path: Path) -> dict[str, float]:
    """Run one measurement in a fresh interpreter; return what it printed."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.validation", "--child", kind, str(path)],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(rows_list: list[int], features: int, repeat: int, workdir: Path,
        cold: bool = False) -> list[dict[str, float]]:
    """Each kind `repeat` times, the kinds taking turns (so load that drifts hits them alike);
    the fastest run counts (the host is shared: noise only adds). Warm: after one untimed
    read that puts the file in the page cache, every kind reads from memory (the strict
    floor). Cold: the page cache is dropped before each run, so every kind reads from disk,
    as a pipeline step in a fresh pod does (needs root)."""
    results = []
    for rows in rows_list:
        path = workdir / f"data_{rows}.parquet"
        # In a child: a child's ru_maxrss starts at its parent's RSS, so the parent stays small.
        subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; "
             "from benchmarks.validation import write_dataset; "
             "write_dataset(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))",
             str(path), str(rows), str(features)],
            check=True, cwd=Path(__file__).resolve().parents[1],
        )
        if not cold:
            measure("read", path)  # warm the page cache: every kind then reads from memory
        row = {"rows": rows, "file_mb": path.stat().st_size / 2**20}
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
        for _ in range(repeat):
            for kind in KINDS:
                if cold:
                    drop_page_cache()
                runs[kind].append(measure(kind, path))
        for kind in KINDS:
            best = min(runs[kind], key=lambda r: r["seconds"])
            print(
                f"  {rows:>9,} rows {kind:<8} "
                + " ".join(f"{r['seconds']:6.2f} s {r['peak_mb']:5.0f} MB" for r in runs[kind]),
                file=sys.stderr,
            )
            row |= {f"{kind}_{k}": v for k, v in best.items()}
        results.append(row)
        path.unlink()
    return results


def markdown(results: list[dict[str, float]], command: str, features: int,
             cold: list[dict[str, float]] | None = None) -> str:
    lines = [
        "# Validation cost vs reading the file",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs (load "
        f"average {os.getloadavg()[0]:.1f} at the end: wall times include waiting for a CPU, "
        "CPU s is the steadier figure), Python "
        f"{platform.python_version()}, pyarrow {pa.__version__}.",
        f"Data: rows × {features} float64 features + int label, Parquet, pyarrow's default row "
        "groups (≤ 1 Mi rows). Each figure is the fastest of --repeat runs, each in a fresh "
        "process; CPU s = its user + system time (pyarrow's read uses several threads, the "
        "validator mostly one); peak = its ru_maxrss.",
        "",
        "## From the page cache (the file read once before)",
        "",
        *_table(results),
    ]
    lines += ["", summary(results[-1], features)]
    if cold:
        lines += ["", "## From disk (page cache dropped before every run)", "",
                  "What a pipeline step in a fresh pod sees: nothing of the file is in memory.",
                  "", *_table(cold), "", summary(cold[-1], features)]
    return "\n".join(lines) + "\n"


def _table(results: list[dict[str, float]]) -> list[str]:
    lines = [
        "| rows | file MB | read s (CPU s) | read peak MB | scan s (CPU s) | scan peak MB "
        "| GX import s | validate s (CPU s) | validate peak MB | GX rows "
        "| time ÷ read | CPU ÷ read | peak ÷ read |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['rows']:,} | {r['file_mb']:.0f} "
            f"| {r['read_seconds']:.2f} ({r['read_cpu_s']:.2f}) | {r['read_peak_mb']:.0f} "
            f"| {r['scan_seconds']:.2f} ({r['scan_cpu_s']:.2f}) | {r['scan_peak_mb']:.0f} "
            f"| {r['gx_seconds']:.2f} "
            f"| {r['validate_seconds']:.2f} ({r['validate_cpu_s']:.2f}) "
            f"| {r['validate_peak_mb']:.0f} | {r['validate_gx_rows']:,} "
            f"| {r['validate_seconds'] / r['read_seconds']:.1f}× "
            f"| {r['validate_cpu_s'] / r['read_cpu_s']:.1f}× "
            f"| {r['validate_peak_mb'] / r['read_peak_mb']:.2f}× |"
        )
    return lines


def summary(big: dict[str, float], features: int) -> str:
    """The figures of the largest size in words: what scales with the data, what does not."""
    read, scan, total = big["read_seconds"], big["scan_seconds"], big["validate_seconds"]
    fixed = max(total - scan, 0.0)
    text = (
        f"At {big['rows']:,} rows × {features} features validation costs {total / read:.1f}× "
        f"the bare read in wall time ({big['validate_cpu_s'] / big['read_cpu_s']:.1f}× in CPU "
        f"time) and {big['validate_peak_mb'] / big['read_peak_mb']:.2f}× in peak memory. The "
        f"exact streaming scan, the part that grows with the data, costs {scan / read:.1f}× the "
        "read (16 columns at a time: it never holds the table). The rest, "
        f"{fixed:.1f} s, is GX Core and does not grow with the rows: importing it "
        f"({big['gx_seconds']:.1f} s alone, partly hidden behind the scan, which imports it in "
        f"a thread) and running the suite on the {big['validate_gx_rows']:,}-row sample (about "
        "10 ms per expectation, 4 expectations per feature)."
    )
    if scan / read < 3:
        breakeven = fixed / (3 - scan / read)
        text += (
            f" So validation stays within 3× the read once the read takes {breakeven:.1f} s or "
            f"more: about {breakeven / read * big['rows'] / 1e6:.1f} M rows of {features} "
            "features read this way."
        )
    else:
        text += " The scan alone costs more than 3× this read, so 3× is out of reach here."
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the fastest counts")
    parser.add_argument("--cold", action="store_true",
                        help="also measure from disk, the page cache dropped (needs root)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    command = "python -m benchmarks.validation " + " ".join(argv or sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="kdflow-bench-") as workdir:
        results = run(args.rows, args.features, args.repeat, Path(workdir))
        cold = run(args.rows, args.features, args.repeat, Path(workdir), cold=True) \
            if args.cold else None
    table = markdown(results, command.strip(), args.features, cold)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


if __name__ == "__main__":
    main()
