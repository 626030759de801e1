"""Is distillation's gain on the built-in digits real? Students and temperatures swept
in-process, each gain tested as the `beats_baseline` gate tests it.

    python -m benchmarks.gain_sweep [--seeds 0 1 2] [--test-fraction 0.5]
        [--student-seeds 0 1 2] [--out FILE] [RECIPE ...]

A RECIPE is a JSON object of DistillConfig settings (`'{"student": "mlp:hidden=8",
"temperature": 4.0}'`); none: the default recipe. Per seed, the validate step splits digits
(`--test-fraction` of the rows for the test split, 899 at 0.5), the default ensemble's three
CNN teachers train once, and each recipe distils a student next to its baseline without Ray
(`--workers 0`); every line is the student's and the baseline's test accuracy, the rows the
student won and lost against the baseline, and McNemar's exact test with its interval
(`kdflow.evaluation.stats.paired_accuracy_test`). With `--student-seeds`, each recipe distils
once per student seed on the same split and teachers, and a `pooled` line tests them
together, as `kdflow run --seeds` does (`kdflow.evaluation.gates.pooled_beats_baseline`).
Writes benchmarks/results/gain_sweep.md (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "gain_sweep.md"
TEACHERS = ["cnn:channels=32-64", "cnn:channels=16-32,hidden=64",
            "cnn:channels=32-32-64,hidden=128"]


def run_seed(seed: int, test_fraction: float, recipes: list[dict[str, Any]], root: Path,
             student_seeds: list[int] | None = None) -> list[dict[str, Any]]:
    import numpy as np

    from kdflow.config import DataConfig, DistillConfig, GateConfig, TeacherConfig
    from kdflow.data.sources import open_source
    from kdflow.distill.driver import run_distillation
    from kdflow.evaluation.gates import pooled_beats_baseline
    from kdflow.evaluation.metrics import logits_on
    from kdflow.evaluation.stats import paired_accuracy_test
    from kdflow.models.sources import load_saved
    from kdflow.steps import train_teacher, validate_data

    dataset = root / "dataset"
    validate_data(DataConfig(test_fraction=test_fraction), seed, dataset, root / "v.md")
    teachers = []
    for i, spec in enumerate(TEACHERS):
        train_teacher(dataset, spec, TeacherConfig(), seed + i, root / f"t{i}")
        teachers.append(str(root / f"t{i}"))
    test = open_source(str(dataset)).read("test")

    def predicted(folder: str) -> Any:
        model, _ = load_saved(Path(folder))
        return logits_on(model, test).argmax(-1).numpy()

    rows = []
    for k, recipe in enumerate(recipes):
        correct: dict[str, list[Any]] = {"student": [], "baseline": []}
        for student_seed in student_seeds or [seed]:
            started = time.monotonic()
            name = f"r{k}s{student_seed}"
            outputs = {r: str(root / name / r) for r in ("student", "baseline")}
            run_distillation(str(dataset), teachers, DistillConfig(workers=0, **recipe),
                             outputs, str(root / "store"), name, student_seed)
            student, baseline = predicted(outputs["student"]), predicted(outputs["baseline"])
            correct["student"].append(student == test.y)
            correct["baseline"].append(baseline == test.y)
            t = paired_accuracy_test(student == test.y, baseline == test.y)
            rows.append({"seed": seed, "student_seed": student_seed, "test": test_fraction,
                         "recipe": recipe, "n": t.n,
                         "student": float((student == test.y).mean()),
                         "baseline": float((baseline == test.y).mean()), "gain": t.estimate,
                         "low": t.low, "high": t.high, "p": t.p_value, "a_only": t.a_only,
                         "b_only": t.b_only, "s": round(time.monotonic() - started)})
            print(json.dumps(rows[-1]), flush=True)
        if len(student_seeds) > 1:  # the --seeds decision: every student seed together
            gate = pooled_beats_baseline(GateConfig(), np.array(correct["student"]),
                                         np.array(correct["baseline"]), student_seeds)
            ev = gate.evidence or {}
            rows.append({"seed": seed, "student_seed": "pooled", "test": test_fraction,
                         "recipe": recipe, "n": ev["n"],
                         "student": float(np.mean(correct["student"])),
                         "baseline": float(np.mean(correct["baseline"])),
                         "gain": ev["estimate"], "low": ev["low"], "high": ev["high"],
                         "p": ev["p_value"], "a_only": ev["a_only"], "b_only": ev["b_only"],
                         "s": 0, "status": gate.status})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def write(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        "# Is the KD gain on the built-in digits real?",
        "",
        f"`{command}` (in-process students, `--workers 0`; the default teachers).",
        "",
        "| seed | student seed | test rows | recipe | baseline | student | gain | 95% CI "
        "| won / lost | p |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        recipe = ", ".join(f"{k}={v}" for k, v in r["recipe"].items()) or "default"
        lines.append(
            f"| {r['seed']} | {r.get('student_seed', r['seed'])} | {r['n']} | {recipe} "
            f"| {r['baseline']:.4f} | {r['student']:.4f} "
            f"| {r['gain'] * 100:+.1f} | [{r['low'] * 100:+.1f}, {r['high'] * 100:+.1f}] "
            f"| {r['a_only']} / {r['b_only']} | {r['p']:.2g} |")
    real = [r for r in rows if r["low"] > 0]
    lines += ["", f"Gains whose interval excludes 0: {len(real)} of {len(rows)}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test-fraction", type=float, default=0.5)
    parser.add_argument("--student-seeds", type=int, nargs="*", default=[],
                        help="distil each recipe once per seed on the same split and "
                             "teachers, and test them together, as kdflow run --seeds does")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the table goes")
    parser.add_argument("recipes", nargs="*", help="JSON objects of DistillConfig settings")
    args = parser.parse_args()
    recipes = [json.loads(r) for r in args.recipes] or [{}]
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"kdflow-gain-{seed}-") as tmp:
            rows += run_seed(seed, args.test_fraction, recipes, Path(tmp), args.student_seeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(write(rows, "python -m benchmarks.gain_sweep " + " ".join(
        [f"--seeds {' '.join(map(str, args.seeds))}", f"--test-fraction {args.test_fraction}",
         *(f"'{r}'" for r in args.recipes)])))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
