"""Quality of the default run over seeds: `python -m benchmarks.quality [--seeds 0 1 2]`.

Runs the whole pipeline (`kdflow run`, defaults, built-in digits) once per seed, each with
its own MLflow store so no champion from another seed gates it, and writes a table of
teachers, ensemble, baseline and distilled student to benchmarks/results/quality.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "quality.md"


def run_seed(seed: int, root: Path, extra: list[str]) -> dict:
    out = root / f"seed-{seed}"
    uri = f"sqlite:///{root / f'mlflow-{seed}.db'}"
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--seed", str(seed), "--output",
           str(out), "--tracking-uri", uri, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"seed {seed} failed:\n{proc.stderr[-2000:]}")
    return json.loads((out / "summary.json").read_text())


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("extra", nargs="*", help="more `kdflow run` options, after --")
    ns = parser.parse_args()
    rows, summaries = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in ns.seeds:
            s = run_seed(seed, Path(tmp), ns.extra)
            summaries.append(s)
            teachers = " / ".join(f"{t['accuracy']:.4f}" for t in s["teachers"])
            smallest = min(t["params"] for t in s["teachers"])
            beats = s["gates"]["beats_baseline"]
            ev = beats.get("evidence") or {}
            even = ((s.get("cost") or {}).get("break_even_requests") or {}).get("pytorch")
            rows.append(
                f"| {seed} | {teachers} | {s['ensemble']['accuracy']:.4f} | "
                f"{s['baseline']['accuracy']:.4f} | {s['student']['accuracy']:.4f} | "
                f"{s['student']['accuracy'] - s['baseline']['accuracy']:+.4f} | "
                f"{beats.get('status', '?')}: [{ev.get('low', 0):+.4f}, {ev.get('high', 0):+.4f}]"
                f", p = {ev.get('p_value', 1):.2g}, {ev.get('a_only', 0)} won / "
                f"{ev.get('b_only', 0)} lost | "
                f"{'never' if even is None else f'{even:,}'} | "
                f"{s['student']['accuracy'] / s['ensemble']['accuracy']:.3f} | "
                f"{smallest / s['student']['params']:.1f}× | "
                f"{'yes' if s['registered'] else 'no'} | {s['duration_s']:.0f} s |"
            )
            print(rows[-1], flush=True)
    first = summaries[0]
    specs = ", ".join(f"`{t['spec']}` ({t['params']:,} params)" for t in first["teachers"])
    kd = first["config"]["distill"]
    test_rows = (first["gates"]["beats_baseline"].get("evidence") or {}).get("n", "?")
    lines = [
        "# Quality of the default run (built-in digits)",
        "",
        f"Command: `python -m benchmarks.quality --seeds {' '.join(map(str, ns.seeds))}` "
        "(each seed is one `kdflow run --seed N` with default settings).",
        "",
        f"Teachers: {specs}. Student: `{first['student']['spec']}` "
        f"({first['student']['params']:,} params), T={kd['temperature']}, "
        f"alpha={kd['alpha']}, {kd['student_epochs']} epochs; the baseline is the same "
        "student trained on hard labels alone, side by side in the same Ray Train run.",
        f"Accuracies are on the seeded test split ({test_rows} rows).",
        "`beats_baseline` is the statistical gate (McNemar's exact test, 95 %: the interval "
        "of student − baseline accuracy, the rows the student won and lost against the "
        "baseline); break-even: requests whose CPU saving (ensemble vs student, PyTorch, "
        "batch 1) pays back the cache fill, distillation and evaluation.",
        "",
        "| seed | teachers | ensemble | baseline | student | KD gain | beats_baseline | "
        "break-even | retention | compression | registered | run time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Mean ± sd over seeds: ensemble {mean_sd([s['ensemble']['accuracy'] for s in summaries])}"
        f", baseline {mean_sd([s['baseline']['accuracy'] for s in summaries])}, student "
        f"{mean_sd([s['student']['accuracy'] for s in summaries])}.",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
