"""The gates that decide registration: each compares one number of the student with its
threshold (`kdflow.config.GateConfig`), and registration needs every one to pass.

The comparative gates decide on the evidence of the test rows (`Outcomes`: every model's
prediction on the same rows), not on the point estimates alone: `beats_baseline` passes
when the interval of the student's gain over its baseline lies above the margin,
`no_regression_vs_champion` when the interval of its drop below the champion lies under
the tolerance (non-inferiority), `min_agreement` when the agreement's interval reaches the
threshold, `max_class_regression` when no class's observed drop passes the tolerance. Each
says "inconclusive", with the test rows the observed effect would need, when its interval
straddles the line; an inconclusive gate does not pass. Intervals are McNemar's
(`kdflow.evaluation.stats.paired_accuracy_test`) at `--confidence`. `--gate-test point`
decides on the point estimates, as kdflow did before, and still records the evidence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kdflow.config import GateConfig
from kdflow.evaluation.metrics import ECE_BINS
from kdflow.evaluation.stats import (
    PairedTest,
    accuracy_interval,
    describe,
    paired_accuracy_test,
    paired_mean_test,
    proportion_interval,
    ratio_interval,
    rows_needed,
)

# Accuracies are ratios of counts: 0.95 - 0.94 is 0.010000000000000009 in floating point.
# Gates compare with this slack so a value shown as equal to its threshold is treated so.
EPS = 1e-9


PASSED, FAILED, INCONCLUSIVE = "passed", "failed", "inconclusive"
STATUS_ORDER = {PASSED: 0, INCONCLUSIVE: 1, FAILED: 2}


@dataclass
class Gate:
    name: str
    passed: bool
    value: float | None
    threshold: float
    op: str
    detail: str
    status: str = ""
    """`passed`, `failed` or `inconclusive` (the evidence cannot tell yet; not passed)."""
    evidence: dict[str, Any] | None = None
    """What a statistical gate decided on: estimate, interval, p-value, rows, rows needed."""

    def __post_init__(self) -> None:
        self.status = self.status or (PASSED if self.passed else FAILED)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Outcomes:
    """The test rows behind the statistical gates: the true class and every model's
    predicted class on each row, the same rows in the same order for all."""

    y: np.ndarray
    student: np.ndarray
    baseline: np.ndarray
    ensemble: np.ndarray
    classes: list[str] = field(default_factory=list)
    champion: np.ndarray | None = None

    def correct(self, name: str) -> np.ndarray:
        predicted: np.ndarray = getattr(self, name)
        return np.asarray(predicted == self.y, bool)


@dataclass
class LMOutcomes:
    """A causal LM's test blocks behind its statistical gates: each block's counted tokens
    and each model's summed negative log-likelihood over them (nats), the same blocks in
    the same order for all."""

    tokens: np.ndarray
    student: np.ndarray
    baseline: np.ndarray
    champion: np.ndarray | None = None

    def gain(self, worse: str, better: str, confidence: float) -> tuple[PairedTest, float]:
        """log perplexity of `worse` minus `better` (nats per token) with its paired
        bootstrap interval over blocks, and the per-block spread of the difference. Each
        block's sums are divided by the mean tokens per block, so the mean difference is
        exactly (Σ NLL_worse − Σ NLL_better) / Σ tokens."""
        scale = max(float(self.tokens.mean()), 1e-12)
        a, b = getattr(self, worse) / scale, getattr(self, better) / scale
        return paired_mean_test(a, b, confidence), float(np.std(a - b))


def gate_status(gate: dict[str, Any]) -> str:
    """A summary gate's status; `passed` decides, the status says how a gate did not pass
    (summaries written before statuses existed: failed)."""
    if gate["passed"]:
        return PASSED
    return INCONCLUSIVE if gate.get("status") == INCONCLUSIVE else FAILED


def _decide(test: PairedTest, line: float, point_passes: bool, cfg: GateConfig,
            spread: float | None = None) -> tuple[str, int | None]:
    """Whether the interval of `test` lies above `line` (passed), at or below it (failed) or
    across it (inconclusive), and the rows the observed effect would need to conclude
    (`spread`: one row's standard deviation of the difference; by default a paired binary
    outcome's). `--gate-test point` takes `point_passes` instead and needs no rows."""
    if cfg.gate_test == "point":
        return (PASSED if point_passes else FAILED), None
    if test.low > line + EPS:
        return PASSED, None
    if test.high <= line + EPS:
        return FAILED, None
    if spread is not None:
        return INCONCLUSIVE, rows_needed(test.estimate, spread, line, cfg.confidence)
    return INCONCLUSIVE, accuracy_rows_needed(test, line, cfg.confidence)


def accuracy_rows_needed(test: PairedTest, line: float, confidence: float,
                         most: int = 100_000_000) -> int | None:
    """The fewest test rows at which the observed table, scaled (the same shares of rows
    won, lost and tied), puts the decision interval's lower end above `line`: the exact
    counterpart of the normal approximation, which promises too few rows when the rows the
    models disagree on are few (5 won, 1 lost of 360: 515 by the approximation, more by
    the interval the gate uses). None when the estimate is not above the line, or past
    `most` rows."""
    if test.estimate <= line:
        return None

    def clears(n: int) -> bool:
        a = round(test.a_only * n / test.n)
        b = round(test.b_only * n / test.n)
        return accuracy_interval(a, b, n, confidence)[0] > line + EPS

    low, high = test.n, test.n * 2
    while not clears(high):
        low, high = high, high * 2
        if high > most:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if clears(mid) else (mid, high)
    return high


def lm_paired_gate(name: str, cfg: GateConfig, found: LMOutcomes, worse: str, better: str,
                   line: float, point_passes: bool, value: float, threshold: float, op: str,
                   said: dict[str, str]) -> Gate:
    """A causal LM's comparative gate on its blocks: the interval of log perplexity of
    `worse` minus `better` against `line` (nats), in the words of `said` (by status)."""
    test, spread = found.gain(worse, better, cfg.confidence)
    sentence = (f"log perplexity {worse} − {better}: {test.estimate:+.4f} nats per token "
                f"(perplexity ×{math.exp(-test.estimate):.3f}), {cfg.confidence:.0%} CI "
                f"[{test.low:+.4f}, {test.high:+.4f}] (paired bootstrap over blocks), "
                f"n = {test.n:,} blocks")
    return _paired_gate(name, cfg, test, line, point_passes, value, threshold, op, said,
                        sentence, spread=spread, unit="blocks")


def _paired_gate(name: str, cfg: GateConfig, test: PairedTest, line: float,
                 point_passes: bool, value: float, threshold: float, op: str,
                 said: dict[str, str], sentence: str, spread: float | None = None,
                 unit: str = "rows") -> Gate:
    """A comparative gate decided on `test` against `line` (`_decide`), its detail the words
    of `said` for its status, the evidence's `sentence` and, when inconclusive, the test
    `unit`s it would need; the evidence recorded beside it."""
    status, needed = _decide(test, line, point_passes, cfg, spread)
    return Gate(name, status == PASSED, value, threshold, op,
                f"{said[status]}: {sentence}{_needs(status, needed, test.n, cfg, unit)}",
                status, {**test.to_dict(), "rows_needed": needed, "summary": sentence})


def _needs(status: str, needed: int | None, n: int, cfg: GateConfig, unit: str) -> str:
    if status != INCONCLUSIVE:
        return ""
    level = f"{cfg.confidence:.0%}"
    if needed is None:
        return (f"; inconclusive at {level}, and more {unit} would not help: the observed "
                "difference is not past the threshold")
    return (f"; inconclusive at {level}: about {needed:,} test {unit} would show an effect "
            f"this size (this split has {n:,})")


def common_gates(
    cfg: GateConfig, student: dict[str, Any], teachers: list[dict[str, Any]]
) -> list[Gate]:
    """The gates every task shares: compression (parameters) and speedup (`latency_ms`:
    batch-1 latency of a classifier, time per generated token of a causal LM)."""
    compression = min(t["params"] for t in teachers) / max(student["params"], 1)
    fastest = min(t["latency_ms"] for t in teachers)
    speedup = fastest / student["latency_ms"] if student["latency_ms"] > 0 else 0.0
    return [
        Gate(
            "compression",
            compression >= cfg.min_compression - EPS,
            round(compression, 2),
            cfg.min_compression,
            ">=",
            f"smallest teacher params / student params {student['params']}",
        ),
        Gate(
            "speedup",
            speedup >= cfg.min_speedup - EPS,
            round(speedup, 2),
            cfg.min_speedup,
            ">=",
            f"fastest teacher {fastest:.3f} ms / student {student['latency_ms']:.3f} ms",
        ),
    ]


def decide_gates(
    cfg: GateConfig,
    *,
    student: dict[str, Any],
    baseline: dict[str, Any],
    ensemble_acc: float,
    teachers: list[dict[str, Any]],
    champion: dict[str, Any] | None,
    champion_unscored: str | None = None,
    outcomes: Outcomes | None = None,
) -> list[Gate]:
    """Every gate, each checked against its threshold; registration needs all to pass.

    `student` needs `accuracy`, `params`, `latency_ms` and `ece`. `champion_unscored` says
    why a champion that exists could not be scored on this test split (other inputs or
    classes): the champion gates then fail closed, rather than passing as if there were no
    champion and letting the new model replace it unseen. `outcomes` are the test rows'
    predictions the statistical gates decide on; without them (or with `--gate-test
    point`) every gate decides on its point estimate.
    """
    if outcomes is None:
        cfg = GateConfig(**{**asdict(cfg), "gate_test": "point"})
    retention = student["accuracy"] / ensemble_acc if ensemble_acc > 0 else 0.0
    gates = [
        Gate(
            "retention",
            retention >= cfg.min_retention - EPS,
            round(retention, 4),
            cfg.min_retention,
            ">=",
            f"student {student['accuracy']:.4f} / ensemble {ensemble_acc:.4f}",
            evidence=None if outcomes is None else _retention_evidence(outcomes, cfg),
        ),
        beats_baseline_gate(cfg, student, baseline, outcomes),
        *common_gates(cfg, student, teachers),
        Gate(
            "calibration",
            student["ece"] <= cfg.max_ece + EPS,
            round(student["ece"], 4),
            cfg.max_ece,
            "<=",
            f"expected calibration error of the student ({ECE_BINS} bins)",
        ),
    ]
    gates.append(_champion_gate(cfg, student, champion, champion_unscored, outcomes))
    gates.append(_class_regression_gate(cfg, champion, champion_unscored, outcomes))
    gates.append(_agreement_gate(cfg, student, outcomes))
    return gates


def _retention_evidence(outcomes: Outcomes, cfg: GateConfig) -> dict[str, Any] | None:
    """The retention ratio's paired bootstrap interval (reported; the gate decides on the
    point estimate)."""
    ensemble = outcomes.correct("ensemble")
    if not ensemble.any():
        return None
    estimate, low, high = ratio_interval(outcomes.correct("student"), ensemble, cfg.confidence)
    return {"estimate": round(estimate, 6), "low": round(low, 6), "high": round(high, 6),
            "confidence": cfg.confidence, "n": int(ensemble.size),
            "summary": f"student / ensemble accuracy: {estimate:.3f}, {cfg.confidence:.0%} "
                       f"interval [{low:.3f}, {high:.3f}] (paired bootstrap), n = "
                       f"{ensemble.size:,}"}


def beats_baseline_gate(cfg: GateConfig, student: dict[str, Any], baseline: dict[str, Any],
                        outcomes: Outcomes | None) -> Gate:
    """The student's test accuracy against its baseline's, on McNemar's interval."""
    gain = student["accuracy"] - baseline["accuracy"]
    margin = cfg.min_gain_over_baseline
    point = f"student {student['accuracy']:.4f} - baseline {baseline['accuracy']:.4f}"
    if outcomes is None:
        return Gate("beats_baseline", gain > margin + EPS, round(gain, 4), margin, ">", point)
    test = paired_accuracy_test(outcomes.correct("student"), outcomes.correct("baseline"),
                                cfg.confidence)
    return _paired_gate("beats_baseline", cfg, test, margin, gain > margin + EPS,
                        round(gain, 4), margin, ">", _beats_said(margin),
                        describe(test, "student vs baseline"))


def _beats_said(margin: float, seeds: str = "") -> dict[str, str]:
    """beats_baseline in words, by status (`margin` in accuracy points; 0 says none)."""
    by = f" by more than {margin * 100:g} points" if margin else ""
    return {PASSED: f"student better than baseline{seeds}{by}",
            FAILED: f"student not better than baseline{seeds}{by}",
            INCONCLUSIVE: f"cannot tell the student from its baseline{seeds}{by}"}


def lm_beats_baseline_gate(cfg: GateConfig, outcomes: LMOutcomes, gain: float,
                           seeds: str = "") -> Gate:
    """A causal LM's beats_baseline on its blocks: `gain` is the baseline's log perplexity
    less the student's; `seeds` (" over 3 seeds") where `outcomes` average several seeds."""
    margin = cfg.min_gain_over_baseline
    return lm_paired_gate("beats_baseline", cfg, outcomes, "baseline", "student", margin,
                          gain > margin + EPS, round(gain, 4), margin, ">",
                          _beats_said(0.0, seeds))


def pooled_beats_baseline(cfg: GateConfig, student: np.ndarray, baseline: np.ndarray,
                          seeds: list[int]) -> Gate:
    """beats_baseline on several seeds together: `student` and `baseline` are (seeds × rows)
    correct/incorrect on the same test rows. Per row, the share of seeds whose student was
    right less the share whose baseline was; the paired bootstrap interval of its mean over
    rows (rows resampled, the seeds held) decides, as McNemar's does for one seed."""
    a, b = student.mean(axis=0), baseline.mean(axis=0)
    margin = cfg.min_gain_over_baseline
    test = paired_mean_test(a, b, cfg.confidence, margin=margin)
    gains = ", ".join(f"{g * 100:+.1f}" for g in student.mean(axis=1) - baseline.mean(axis=1))
    sentence = (f"{describe(test, 'student vs baseline, mean of seeds')} rows × "
                f"{len(seeds)} seeds (paired bootstrap over rows; seeds {gains} points)")
    return _paired_gate("beats_baseline", cfg, test, margin, test.estimate > margin + EPS,
                        round(test.estimate, 4), margin, ">",
                        _beats_said(margin, f" over {len(seeds)} seeds"), sentence,
                        spread=float(np.std(a - b)))


def _champion_gate(cfg: GateConfig, student: dict[str, Any], champion: dict[str, Any] | None,
                   unscored: str | None, outcomes: Outcomes | None) -> Gate:
    name, tolerance = "no_regression_vs_champion", cfg.max_regression
    if champion is None and unscored:
        return Gate(name, False, None, tolerance, "<=",
                    f"{unscored}; a model that reads other data replaces the champion only "
                    "by hand (kdflow promote), or register it under another --model-name")
    if champion is None:
        return Gate(name, True, None, tolerance, "<=", "no champion yet")
    drop = champion["accuracy"] - student["accuracy"]
    point = (f"champion v{champion['version']} {champion['accuracy']:.4f} - student "
             f"{student['accuracy']:.4f}")
    if outcomes is None or outcomes.champion is None:
        return Gate(name, drop <= tolerance + EPS, round(drop, 4), tolerance, "<=", point)
    test = paired_accuracy_test(outcomes.correct("student"), outcomes.correct("champion"),
                                cfg.confidence)
    by = f" by more than {tolerance * 100:g} points"
    said = {PASSED: "no worse than the champion" + by, FAILED: "worse than the champion" + by,
            INCONCLUSIVE: "cannot tell whether it is worse than the champion" + by}
    return _paired_gate(name, cfg, test, -tolerance - 2 * EPS, drop <= tolerance + EPS,
                        round(drop, 4), tolerance, "<=", said,
                        describe(test, f"student vs champion v{champion['version']}"))


def _class_regression_gate(cfg: GateConfig, champion: dict[str, Any] | None,
                           unscored: str | None, outcomes: Outcomes | None) -> Gate:
    """No class may drop by more than `max_class_regression` vs the champion. A class fails
    when its whole interval lies past the tolerance, is inconclusive when only its observed
    drop does (few rows a class: proof of no drop per class would keep any champion for
    ever; the overall champion gate carries that burden), and passes otherwise."""
    name, tolerance = "max_class_regression", cfg.max_class_regression
    if champion is None:
        detail = "no champion yet" if not unscored else "champion not compared (see " \
            "no_regression_vs_champion)"
        return Gate(name, not unscored, None, tolerance, "<=", detail)
    if outcomes is None or outcomes.champion is None or not outcomes.classes:
        return Gate(name, True, None, tolerance, "<=", "no per-row predictions to compare")
    student, held = outcomes.correct("student"), outcomes.correct("champion")
    classes: dict[str, Any] = {}
    for k, label in enumerate(outcomes.classes):
        rows = outcomes.y == k
        if not rows.any():
            continue
        test = paired_accuracy_test(student[rows], held[rows], cfg.confidence)
        drop = -test.estimate
        if cfg.gate_test == "point":
            status = PASSED if drop <= tolerance + EPS else FAILED
        elif -test.high > tolerance + EPS:
            status = FAILED
        else:
            status = INCONCLUSIVE if drop > tolerance + EPS else PASSED
        classes[label] = {"drop": round(drop, 6), "low": round(-test.high, 6),
                          "high": round(-test.low, 6), "n": test.n, "status": status}
    worst = max(classes.items(), key=lambda kv: (STATUS_ORDER[kv[1]["status"]], kv[1]["drop"]))
    status = worst[1]["status"]
    label, entry = worst
    detail = (f"class {label} dropped {entry['drop'] * 100:+.1f} points vs champion "
              f"v{champion['version']}, {cfg.confidence:.0%} CI [{entry['low'] * 100:+.1f}, "
              f"{entry['high'] * 100:+.1f}], n = {entry['n']:,}")
    if status == PASSED:
        detail = f"every class within {tolerance * 100:g} points of the champion; worst: " + detail
    else:
        failing = [c for c, e in classes.items() if e["status"] != PASSED]
        detail = f"{status} for class(es) {', '.join(failing)}; worst: " + detail
    return Gate(name, status == PASSED, round(entry["drop"], 4), tolerance, "<=", detail,
                status, {"classes": classes, "confidence": cfg.confidence})


def _agreement_gate(cfg: GateConfig, student: dict[str, Any], outcomes: Outcomes | None
                    ) -> Gate:
    """Top-1 agreement of the student with the ensemble (off at 0), with its exact interval,
    and the share of the ensemble's errors the student repeats."""
    name, threshold = "min_agreement", cfg.min_agreement
    agreement = float(student.get("agreement") or 0.0)
    if outcomes is None:
        return Gate(name, agreement >= threshold - EPS, round(agreement, 4), threshold, ">=",
                    "student top-1 = ensemble top-1")
    same = outcomes.student == outcomes.ensemble
    n, k = int(same.size), int(same.sum())
    agreement = k / max(n, 1)
    low, high = proportion_interval(k, n, cfg.confidence) if n else (0.0, 1.0)
    wrong = outcomes.ensemble != outcomes.y
    copied = float(same[wrong].mean()) if wrong.any() else 0.0
    if cfg.gate_test == "point" or threshold <= 0:
        status = PASSED if agreement >= threshold - EPS else FAILED
    else:
        status = PASSED if low >= threshold - EPS else FAILED if high < threshold else INCONCLUSIVE
    sentence = (f"student agrees with the ensemble on {agreement:.1%} of {n:,} test rows, "
                f"{cfg.confidence:.0%} CI [{low:.1%}, {high:.1%}]; it repeats {copied:.1%} of "
                f"the ensemble's {int(wrong.sum()):,} errors")
    return Gate(name, status == PASSED, round(agreement, 4), threshold, ">=",
                sentence + ("; off (--min-agreement 0)" if threshold <= 0 else ""), status,
                {"estimate": round(agreement, 6), "low": round(low, 6), "high": round(high, 6),
                 "n": n, "copied_errors": round(copied, 6), "ensemble_errors": int(wrong.sum()),
                 "confidence": cfg.confidence, "summary": sentence})
