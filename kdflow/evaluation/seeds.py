"""Several seeds of one recipe (`--seeds 0 1 2`): which student is registered, and the
beats_baseline decision on all of them together.

Each seed distils its own student and its own baseline from the same teachers. The one
evaluated against the other gates and registered is the seed whose student had the best
validation accuracy (token accuracy for a causal LM): chosen on the validation rows, not on
the test rows the gates read, so the test figures stay an unbiased estimate for it.

beats_baseline decides on every seed: for each test row, the share of the seeds whose
student got it right less the share whose baseline did (for a causal LM, each block's
negative log-likelihood averaged over the seeds), and the paired bootstrap interval of that
difference's mean over rows (rows resampled, seeds held) at --confidence. The recipe, not one
lucky seed, must beat its baseline; each seed's own decision (McNemar's test, or the blocks'
bootstrap) is recorded beside it, with the mean and spread of the seeds' figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdflow.config import GateConfig
from kdflow.data.sources import open_source
from kdflow.distill.lm_task import token_metrics
from kdflow.evaluation.gates import (
    Gate,
    LMOutcomes,
    Outcomes,
    beats_baseline_gate,
    lm_beats_baseline_gate,
    pooled_beats_baseline,
)
from kdflow.evaluation.metrics import logits_on
from kdflow.evaluation.summary import TestRows
from kdflow.models.sources import encoder_of, load_saved


@dataclass(frozen=True)
class SeedRun:
    """One seed's distillation: its student and baseline folders and the student's best
    validation accuracy (None where the step did not report one)."""

    seed: int
    student: Path
    baseline: Path
    val_accuracy: float | None = None


def choose(runs: list[SeedRun]) -> SeedRun:
    """The run whose student had the best validation accuracy; the earlier seed on a tie."""
    if not runs:
        raise ValueError("no seed's distillation to choose from")
    return max(runs, key=lambda r: -math.inf if r.val_accuracy is None else r.val_accuracy)


def runs_of(record: dict[str, Any] | None, student_dir: Path, baseline_dir: Path,
            seeds_dir: Path) -> list[SeedRun]:
    """Every seed's run from the distill step's `seeds` record (`kdflow.steps.distill_seeds`):
    the chosen seed's folders are `student_dir` and `baseline_dir`, the others' under
    `seeds_dir`. No record (one seed): []."""
    runs = []
    for run in (record or {}).get("runs") or []:
        folder = run.get("folder")
        student, baseline = ((student_dir, baseline_dir) if folder is None else
                             (seeds_dir / folder / "student", seeds_dir / folder / "baseline"))
        runs.append(SeedRun(int(run["seed"]), student, baseline, run.get("val_accuracy")))
    return runs


def apply_seeds(summary: dict[str, Any], dataset_dir: Path, runs: list[SeedRun],
                cfg: GateConfig) -> None:
    """Decide beats_baseline on every seed of `runs` and record each seed in
    `summary["seeds"]`; `summary` is the chosen seed's (`choose`), whose other gates stand."""
    chosen = choose(runs)
    if summary.get("task") == "causal-lm":
        pooled, rows = _lm_seeds(dataset_dir, runs, cfg)
        metric = "perplexity"
    else:
        pooled, rows = _classifier_seeds(dataset_dir, runs, cfg)
        metric = "accuracy"
    gate = {k: v for k, v in pooled.to_dict().items() if k != "name"}
    summary["gates"]["beats_baseline"] = gate
    summary["passed"] = all(g["passed"] for g in summary["gates"].values())
    for row, run in zip(rows, runs, strict=True):
        row |= {"seed": run.seed, "val_accuracy": run.val_accuracy,
                "chosen": run.seed == chosen.seed}

    def spread(key: str) -> dict[str, float]:
        values = np.array([r[key] for r in rows], float)
        return {"mean": round(float(values.mean()), 6),
                "std": round(float(values.std(ddof=1)) if len(values) > 1 else 0.0, 6)}

    summary["seeds"] = {
        "seeds": [r.seed for r in runs],
        "chosen": chosen.seed,
        "chosen_by": "best validation accuracy" + (" (tokens)" if metric == "perplexity"
                                                   else ""),
        "metric": metric,
        "student": spread("student"),
        "baseline": spread("baseline"),
        "gain": spread("gain"),
        "won": sum(r["decision"] == "passed" for r in rows),
        "runs": rows,
    }


def _seed_row(gate: Gate, student: float, baseline: float, gain: float) -> dict[str, Any]:
    evidence = gate.evidence or {}
    return {"student": student, "baseline": baseline, "gain": round(gain, 6),
            "decision": gate.status, "low": evidence.get("low"), "high": evidence.get("high"),
            "p_value": evidence.get("p_value")}


def _classifier_seeds(dataset_dir: Path, runs: list[SeedRun], cfg: GateConfig
                      ) -> tuple[Gate, list[dict[str, Any]]]:
    rows = TestRows(open_source(str(dataset_dir)))
    y = np.asarray(rows.y)
    student, baseline, found = [], [], []
    for run in runs:
        s_model, _ = load_saved(run.student)
        b_model, _ = load_saved(run.baseline)
        s_pred = logits_on(s_model, rows.of(s_model)).argmax(-1).numpy()
        b_pred = logits_on(b_model, rows.of(b_model)).argmax(-1).numpy()
        student.append(s_pred == y)
        baseline.append(b_pred == y)
        s_acc, b_acc = float(student[-1].mean()), float(baseline[-1].mean())
        own = beats_baseline_gate(cfg, {"accuracy": s_acc}, {"accuracy": b_acc},
                                  Outcomes(y=y, student=s_pred, baseline=b_pred, ensemble=y))
        found.append(_seed_row(own, s_acc, b_acc, s_acc - b_acc))
    pooled = pooled_beats_baseline(cfg, np.array(student), np.array(baseline),
                                   [r.seed for r in runs])
    return pooled, found


def _lm_seeds(dataset_dir: Path, runs: list[SeedRun], cfg: GateConfig
              ) -> tuple[Gate, list[dict[str, Any]]]:
    data = open_source(str(dataset_dir))
    test = None
    tokens: np.ndarray | None = None
    student, baseline, found = [], [], []
    for run in runs:
        s_model, _ = load_saved(run.student)
        b_model, _ = load_saved(run.baseline)
        if test is None:  # every seed's student shares the one tokenizer (lm_checks)
            test = data.read("test", encoder=encoder_of(s_model))
        s, b = (token_metrics(m, test, per_row=True) for m in (s_model, b_model))
        tokens = s["row_tokens"]
        student.append(s["row_nll"])
        baseline.append(b["row_nll"])
        gain = math.log(b["perplexity"]) - math.log(s["perplexity"])
        own = lm_beats_baseline_gate(cfg, LMOutcomes(tokens, s["row_nll"], b["row_nll"]), gain)
        found.append(_seed_row(own, s["perplexity"], b["perplexity"], gain))
    assert tokens is not None
    pooled_outcomes = LMOutcomes(tokens, np.mean(student, axis=0), np.mean(baseline, axis=0))
    gain = float(np.mean([r["gain"] for r in found]))
    n = len(runs)
    pooled = lm_beats_baseline_gate(cfg, pooled_outcomes, gain, f" over {n} seeds")
    seeds = ", ".join(f"{r['gain']:+.4f}" for r in found)
    pooled.detail += f"; seeds {seeds} nats (mean of {n} seeds' log-likelihoods per block)"
    return pooled, found
