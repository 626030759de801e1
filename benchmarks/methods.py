"""Quality of every distillation method, on several datasets, over seeds.

    python -m benchmarks.methods [--seeds 0 1 2] [--datasets digits tabular sequence]
                                 [--methods logit feature attention separate born_again]

For each dataset and seed: the data is prepared by the validate step, the teachers are
trained once by the teacher step, and each method is one run of the distill step (Ray Train,
student and no-distillation baseline side by side from the same initial weights and
batches). Accuracies are on the seeded test split; the ensemble is the mean of the teachers'
probabilities. A `hinton` row reproduces the shape of Hinton et al. 2015's MNIST finding on
digits: a larger student, soft targets at a higher temperature, and how much of the gap
between the baseline student and the teacher ensemble distillation recovers.

Writes benchmarks/results/methods.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results" / "methods.md"
WORKERS = 0
"""Ray Train workers per distill run (`--workers`)."""

# Each dataset: how to make it, its teachers and students. Teachers of different families
# in one ensemble; the transformer teacher (when there is one) is the hint teacher for
# attention distillation, whose student is a small transformer.
DATASETS: dict[str, dict[str, Any]] = {
    "digits": {
        "about": "sklearn's bundled 8x8 digits (1,797 rows, 10 classes), image-like",
        "input_shape": None,
        "teachers": ["cnn:channels=32-64", "resnet:depth=1,width=16",
                     "transformer:dim=32,depth=2,heads=4,patch=2"],
        "teacher_epochs": 30,
        "student": "mlp:hidden=12",
        "attention_student": "transformer:dim=8,depth=1,heads=2,patch=2",
        "attention_teacher": 2,
        "student_epochs": 60,
    },
    "tabular": {
        "about": "make_classification: 4,000 rows, 20 features (10 informative), 5 classes, "
                 "5% flipped labels",
        "input_shape": None,
        # MLP teachers: a transformer over 20 one-token features reached 0.51 here and
        # dragged the mean ensemble below its best teacher; so no attention method on it.
        "teachers": ["mlp:hidden=256-256,dropout=0.2", "mlp:hidden=512,dropout=0.3",
                     "mlp:hidden=128-128-128,dropout=0.2"],
        "teacher_epochs": 30,
        "student": "mlp:hidden=16",
        "attention_student": None,
        "attention_teacher": None,
        "student_epochs": 60,
    },
    "sequence": {
        "about": "generated sequences: 3,000 rows of length 32, 4 classes (a noisy sine of "
                 "one of 4 frequencies, random phase and amplitude)",
        "input_shape": [1, 32],
        "teachers": ["cnn1d:channels=16-32,kernel=5,hidden=64",
                     "transformer:dim=32,depth=2,heads=4,patch=4",
                     "mlp:hidden=256-256,dropout=0.2"],
        "teacher_epochs": 30,
        "student": "cnn1d:channels=8,kernel=5,hidden=16",
        "attention_student": "transformer:dim=8,depth=1,heads=2,patch=4",
        "attention_teacher": 1,
        "student_epochs": 60,
    },
}

METHODS: dict[str, dict[str, Any]] = {
    "logit": {},
    "feature": {"feature_weight": 1.0, "teacher_mode": "online"},
    "attention": {"attention_weight": 1.0, "teacher_mode": "online"},
    "separate": {"multi_teacher": "separate"},
    "born_again": {"generations": 2},
    "augment": {"teacher_mode": "online", "augment_noise": 0.3},
}
METHOD_ABOUT = {
    "logit": "the default: mean of the teachers' softened probabilities, T=2, alpha=0",
    "feature": "logit KD + FitNets hints from the first teacher's penultimate features",
    "attention": "logit KD + MiniLM attention-map matching; transformer teacher and student",
    "separate": "one KL per teacher, summed with uniform weights (the same gradient as "
                "`logit`: Σ_k w_k·KL(p_k‖q) = KL(p̄‖q) + a constant)",
    "born_again": "logit KD, then a second generation taught by the first",
    "augment": "logit KD on noisy copies of the rows (Gaussian, 0.3 standard deviations per "
               "feature), labelled by the teachers online: a transfer set beyond the training "
               "rows. Its baseline trains on the same noisy rows, so compare its distilled "
               "column with `logit`'s, not only its KD gain",
}


def make_frame(name: str, seed: int) -> pd.DataFrame:
    """The dataset as a frame of float features and a `label` column (fixed data, any seed)."""
    if name == "digits":
        from kdflow.data.prepared import builtin_frame

        return builtin_frame("digits")
    rng = np.random.default_rng(1234)
    if name == "tabular":
        from sklearn.datasets import make_classification

        x, y = make_classification(n_samples=4000, n_features=20, n_informative=10,
                                   n_redundant=4, n_classes=5, flip_y=0.05, class_sep=1.0,
                                   random_state=1234)
    elif name == "sequence":
        n, length = 3000, 32
        y = rng.integers(0, 4, n)
        t = np.arange(length)
        freq = np.array([1.0, 1.5, 2.0, 2.5])[y][:, None] * 2 * np.pi / length
        phase = rng.uniform(0, 2 * np.pi, (n, 1))
        amp = rng.uniform(0.5, 1.5, (n, 1))
        x = amp * np.sin(freq * t + phase) + rng.normal(0, 0.6, (n, length))
    else:
        raise SystemExit(f"unknown dataset {name!r}: one of {', '.join(DATASETS)}")
    frame = pd.DataFrame(x.astype(np.float32), columns=[f"x{i}" for i in range(x.shape[1])])
    frame["label"] = y
    return frame


def prepare(name: str, seed: int, root: Path) -> Path:
    from kdflow.config import DataConfig
    from kdflow.steps import validate_data

    if name == "digits":
        data = "builtin:digits"
    else:
        data = str(root / f"{name}.parquet")
        make_frame(name, seed).to_parquet(data)
    spec = DATASETS[name]
    cfg = DataConfig(data=data, input_shape=spec["input_shape"])
    out = root / f"{name}-{seed}" / "dataset"
    validate_data(cfg, seed, out, out.parent / "validation.md")
    return out


def train_teachers(name: str, dataset: Path, seed: int) -> list[Path]:
    from kdflow.config import TeacherConfig
    from kdflow.steps import train_teacher

    spec = DATASETS[name]
    cfg = TeacherConfig(teachers=spec["teachers"], teacher_epochs=spec["teacher_epochs"])
    folders = []
    for i, teacher in enumerate(spec["teachers"]):
        folder = dataset.parent / f"teacher-{i}"
        train_teacher(dataset, teacher, cfg, seed + i, folder)
        folders.append(folder)
    return folders


def split_accuracy(model_dir: Path, dataset: Path) -> tuple[float, np.ndarray]:
    """Test-split accuracy of a saved model, and its probabilities (for the ensemble)."""
    import torch

    from kdflow.data.prepared import read_split
    from kdflow.models.artifacts import load_model
    from kdflow.models.inference import predict_logits

    model, _ = load_model(model_dir)
    test = read_split(dataset, "test")
    with torch.no_grad():
        probs = torch.softmax(predict_logits(model, test.x), -1).numpy()
    return float((probs.argmax(-1) == test.y).mean()), probs


def latency_ms(model_dir: Path, repeats: int = 300) -> float:
    """Median CPU latency of one row, one thread."""
    import torch

    from kdflow.models.artifacts import load_model

    torch.set_num_threads(1)
    model = load_model(model_dir)[0].eval()
    x = torch.zeros(1, model.mean.numel())
    times = []
    with torch.no_grad():
        for _ in range(20):
            model(x)
        for _ in range(repeats):
            started = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def run_method(name: str, method: str, dataset: Path, teachers: list[Path], seed: int,
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    from kdflow.config import DistillConfig
    from kdflow.distill.run import distill
    spec = DATASETS[name]
    settings: dict[str, Any] = {"student": spec["student"], "workers": WORKERS,
                                "student_epochs": spec["student_epochs"], **METHODS[method]}
    if method == "attention":
        settings |= {"student": spec["attention_student"],
                     "hint_teacher": spec["attention_teacher"]}
    settings |= overrides or {}
    cfg = replace(DistillConfig(), **settings)
    out = dataset.parent / f"{method}-{time.time_ns()}"
    started = time.perf_counter()
    distill(dataset, teachers, cfg, out / "student", out / "baseline", out / "work",
            f"{name}-{method}-{seed}-{time.time_ns()}", seed)
    seconds = time.perf_counter() - started
    student, _ = split_accuracy(out / "student", dataset)
    baseline, _ = split_accuracy(out / "baseline", dataset)
    return {"dataset": name, "method": method, "seed": seed, "student": student,
            "baseline": baseline, "student_spec": cfg.student, "seconds": seconds,
            "params": _params(out / "student"), "latency_ms": latency_ms(out / "student")}


def _params(model_dir: Path) -> int:
    from kdflow.models.artifacts import load_model
    from kdflow.models.zoo import count_params

    return count_params(load_model(model_dir)[0])


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--no-hinton", action="store_true", help="skip the Hinton-shape runs")
    parser.add_argument("--teacher-epochs", type=int, help="override every dataset's (smoke runs)")
    parser.add_argument("--student-epochs", type=int, help="override every dataset's (smoke runs)")
    parser.add_argument("--workers", type=int, default=0,
                        help="Ray Train workers per run (default 0: in-process, the same "
                             "weights as 1 worker process without its start-up cost)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    ns = parser.parse_args(argv)
    global WORKERS
    WORKERS = ns.workers
    for method in ns.methods:
        if method not in METHODS:
            raise SystemExit(f"unknown method {method!r}: one of {', '.join(METHODS)}")
    command = "python -m benchmarks.methods " + " ".join(argv or sys.argv[1:])
    for spec in DATASETS.values():
        spec["teacher_epochs"] = ns.teacher_epochs or spec["teacher_epochs"]
        spec["student_epochs"] = ns.student_epochs or spec["student_epochs"]
    if ns.student_epochs:
        HINTON["student_epochs"] = ns.student_epochs
    from kdflow.distill.runtime import ensure_ray

    ensure_ray()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    teachers_info: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kdflow-methods-") as tmp:
        root = Path(tmp)
        for name in ns.datasets:
            for seed in ns.seeds:
                dataset = prepare(name, seed, root)
                teachers = train_teachers(name, dataset, seed)
                probs = []
                for spec, folder in zip(DATASETS[name]["teachers"], teachers, strict=True):
                    acc, p = split_accuracy(folder, dataset)
                    probs.append(p)
                    teachers_info.append({"dataset": name, "seed": seed, "spec": spec,
                                          "accuracy": acc, "params": _params(folder),
                                          "latency_ms": latency_ms(folder)})
                from kdflow.data.prepared import read_split

                ensemble = float((np.mean(probs, 0).argmax(-1)
                                  == read_split(dataset, "test").y).mean())
                for method in ns.methods:
                    if method == "attention" and DATASETS[name]["attention_student"] is None:
                        continue
                    row = run_method(name, method, dataset, teachers, seed)
                    row["ensemble"] = ensemble
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                if name == "digits" and not ns.no_hinton:
                    row = run_method(name, "logit", dataset, teachers, seed, HINTON)
                    row |= {"method": "hinton", "ensemble": ensemble}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if "born_again" in ns.methods:
                        # Born-again where Furlanello et al. ran it: a student with the
                        # capacity to improve on its teacher, here the Hinton-shape one.
                        row = run_method(name, "logit", dataset, teachers, seed,
                                         HINTON | {"generations": 2})
                        row |= {"method": "hinton_born_again", "ensemble": ensemble}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    text = report(rows, teachers_info, ns, command, time.perf_counter() - started)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(text)
    print(text)


# Hinton et al. 2015 (MNIST): a large student overfits hard labels; soft targets at a high
# temperature carry the teachers' similarity structure and close most of the gap.
HINTON = {"student": "mlp:hidden=256-256", "temperature": 8.0, "alpha": 0.1,
          "student_epochs": 60}


def report(rows: list[dict[str, Any]], teachers: list[dict[str, Any]], ns: argparse.Namespace,
           command: str, seconds: float) -> str:
    import os

    import torch

    lines = [
        "# Distillation methods: quality over seeds",
        "",
        f"Command: `{command.strip()}` (took {seconds / 60:.0f} min).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (load average "
        f"{os.getloadavg()[0]:.1f} at the end), torch {torch.__version__} CPU. Seeds: "
        f"{', '.join(map(str, ns.seeds))}: each seed splits the data, trains the teachers and "
        "distils afresh. Accuracy on the seeded 20% test split; mean ± sd over seeds. KD gain "
        "= student − baseline (the same student trained on hard labels alone, side by side in "
        "the same Ray Train run); latency: one row, one thread, median.",
        "",
        "Methods:",
        "",
        *[f"- `{m}`: {METHOD_ABOUT[m]}" for m in ns.methods],
        f"- `hinton`: `{HINTON['student']}` student, T={HINTON['temperature']}, "
        f"alpha={HINTON['alpha']} (digits only); gap recovered = (student − baseline) ÷ "
        "(ensemble − baseline)",
        "- `hinton_born_again`: the `hinton` student as generation 1, then a second "
        "generation of the same architecture taught by it alone (digits only)",
        "",
    ]
    for name in ns.datasets:
        spec = DATASETS[name]
        lines += [f"## {name}", "", f"{spec['about']}.", ""]
        lines += ["| teacher | params | latency ms | accuracy |", "| --- | --- | --- | --- |"]
        for teacher in spec["teachers"]:
            of = [t for t in teachers if t["dataset"] == name and t["spec"] == teacher]
            lines.append(f"| `{teacher}` | {of[0]['params']:,} | "
                         f"{statistics.median(t['latency_ms'] for t in of):.3f} | "
                         f"{mean_sd([t['accuracy'] for t in of])} |")
        lines += [
            "",
            "| method | student | params | latency ms | ensemble | baseline | distilled | "
            "KD gain | gain > 0 on seeds | gap recovered |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for method in [*ns.methods, "hinton", "hinton_born_again"]:
            of = [r for r in rows if r["dataset"] == name and r["method"] == method]
            if not of:
                continue
            gains = [r["student"] - r["baseline"] for r in of]
            gaps = [(r["student"] - r["baseline"]) / (r["ensemble"] - r["baseline"])
                    for r in of if r["ensemble"] > r["baseline"]]
            gap = f"{statistics.mean(gaps):.0%}" if gaps else "n/a"
            lines.append(
                f"| `{method}` | `{of[0]['student_spec']}` | {of[0]['params']:,} | "
                f"{statistics.median(r['latency_ms'] for r in of):.3f} | "
                f"{mean_sd([r['ensemble'] for r in of])} | "
                f"{mean_sd([r['baseline'] for r in of])} | "
                f"{mean_sd([r['student'] for r in of])} | "
                f"{statistics.mean(gains):+.4f} | {sum(g > 0 for g in gains)}/{len(gains)} | "
                f"{gap} |"
            )
        lines.append("")
    lines += ["Raw rows (JSON, one per run):", "", "```",
              *[json.dumps(r) for r in rows], "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
