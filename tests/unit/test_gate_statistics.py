"""The statistical gates on hand-made predictions where the answer is known: each gate's
pass, fail and inconclusive paths (McNemar's exact test and its interval at --confidence),
the rows an inconclusive gate would need, the old point decisions behind --gate-test point,
per-class regression vs the champion, and agreement with the ensemble."""

from __future__ import annotations

import numpy as np
import pytest

from kdflow.config import GateConfig
from kdflow.errors import ConfigError
from kdflow.evaluation.gates import Outcomes, decide_gates

TEACHERS = [{"params": 10_000, "latency_ms": 2.0}]


def outcomes(n: int, student_only: int, baseline_only: int, *, both_wrong: int = 0,
             classes: int = 2, champion: np.ndarray | None = None) -> Outcomes:
    """n rows of true class `row % classes`; the student right where the baseline is wrong
    on `student_only` rows, the reverse on `baseline_only`, both wrong on `both_wrong`, both
    right on the rest; the ensemble always right."""
    y = np.arange(n) % classes
    wrong = (y + 1) % classes
    student, baseline = y.copy(), y.copy()
    baseline[:student_only] = wrong[:student_only]
    end = student_only + baseline_only
    student[student_only:end] = wrong[student_only:end]
    student[end:end + both_wrong] = wrong[end:end + both_wrong]
    baseline[end:end + both_wrong] = wrong[end:end + both_wrong]
    return Outcomes(y=y, student=student, baseline=baseline, ensemble=y.copy(),
                    classes=[str(k) for k in range(classes)], champion=champion)


def decide(found: Outcomes, cfg: GateConfig | None = None, champion: dict | None = None,
           unscored: str | None = None) -> dict:
    student_acc = float((found.student == found.y).mean())
    result = decide_gates(
        cfg or GateConfig(),
        student={"accuracy": student_acc, "params": 100, "latency_ms": 0.5, "ece": 0.01,
                 "agreement": float((found.student == found.ensemble).mean())},
        baseline={"accuracy": float((found.baseline == found.y).mean())},
        ensemble_acc=1.0, teachers=TEACHERS, champion=champion, champion_unscored=unscored,
        outcomes=found,
    )
    return {g.name: g for g in result}


def test_three_rows_better_of_360_is_inconclusive_and_does_not_pass() -> None:
    gate = decide(outcomes(360, 5, 2))["beats_baseline"]
    assert (gate.status, gate.passed) == ("inconclusive", False)
    assert gate.value == pytest.approx(3 / 360, abs=1e-4)
    ev = gate.evidence
    assert ev["n"] == 360 and ev["low"] < 0 < ev["high"] and ev["p_value"] > 0.05
    assert ev["rows_needed"] > 360
    assert "inconclusive at 95%" in gate.detail
    assert f"{ev['rows_needed']:,} test rows" in gate.detail
    assert gate.detail.startswith("cannot tell the student from its baseline: student vs "
                                  "baseline: +0.8 points, 95% CI [")


def test_forty_rows_better_of_2000_passes() -> None:
    gate = decide(outcomes(2000, 50, 10))["beats_baseline"]
    assert (gate.status, gate.passed) == ("passed", True)
    assert gate.evidence["low"] > 0 and gate.evidence["p_value"] < 0.001
    assert gate.evidence["rows_needed"] is None
    assert gate.detail.startswith("student better than baseline: student vs baseline: "
                                  "+2.0 points, 95% CI [+")
    assert gate.detail.endswith("n = 2,000")


def test_a_student_clearly_worse_than_its_baseline_fails() -> None:
    gate = decide(outcomes(2000, 10, 50))["beats_baseline"]
    assert (gate.status, gate.passed) == ("failed", False)
    assert gate.evidence["high"] < 0


def test_a_student_identical_to_its_baseline_does_not_pass() -> None:
    gate = decide(outcomes(360, 0, 0, both_wrong=20))["beats_baseline"]
    assert (gate.status, gate.passed, gate.value) == ("inconclusive", False, 0.0)
    assert gate.evidence["rows_needed"] is None and "more rows would not help" in gate.detail


def test_the_margin_moves_the_line() -> None:
    found = outcomes(2000, 50, 10)  # +2.0 points, CI about [+1.2, +2.8]
    assert decide(found, GateConfig(min_gain_over_baseline=0.005))["beats_baseline"].passed
    gate = decide(found, GateConfig(min_gain_over_baseline=0.02))["beats_baseline"]
    assert gate.status == "inconclusive" and "by more than 2 points" in gate.detail
    assert gate.evidence["rows_needed"] is None  # the estimate is not above the margin
    assert "more rows would not help" in gate.detail
    assert decide(found, GateConfig(min_gain_over_baseline=0.04))["beats_baseline"].status == \
        "failed"


def test_a_higher_confidence_needs_more_evidence() -> None:
    found = outcomes(1000, 19, 7)  # p about 0.03
    assert decide(found)["beats_baseline"].passed
    gate = decide(found, GateConfig(confidence=0.99))["beats_baseline"]
    assert gate.status == "inconclusive" and "99% CI" in gate.detail


def test_point_decisions_stay_behind_an_option() -> None:
    gate = decide(outcomes(360, 5, 2), GateConfig(gate_test="point"))["beats_baseline"]
    assert (gate.status, gate.passed) == ("passed", True)
    assert gate.evidence["low"] < 0  # the evidence is still recorded


def test_champion_gate_needs_proof_of_no_regression() -> None:
    # the champion right where the student is, except 3 rows each way: a tie on 2,000 rows
    found = outcomes(2000, 0, 0)
    champion = found.y.copy()
    champion[:3] = (found.y[:3] + 1) % 2
    found.student[3:6] = (found.y[3:6] + 1) % 2
    found.champion = champion
    held = {"version": 4, "accuracy": float((champion == found.y).mean())}
    gate = decide(found, champion=held)["no_regression_vs_champion"]
    assert gate.status == "passed" and gate.value == 0.0
    assert gate.detail.startswith("no worse than the champion by more than 1 points: student "
                                  "vs champion v4: +0.0 points")
    # the same tie on 200 rows cannot rule out a drop of a point
    small = outcomes(200, 0, 0)
    small.champion = small.y.copy()
    small.champion[:3] = (small.y[:3] + 1) % 2
    small.student[3:6] = (small.y[3:6] + 1) % 2
    gate = decide(small, champion={"version": 4, "accuracy": 197 / 200})[
        "no_regression_vs_champion"]
    assert gate.status == "inconclusive" and not gate.passed
    assert gate.evidence["rows_needed"] > 200


def test_champion_gate_fails_when_clearly_worse() -> None:
    found = outcomes(2000, 0, 0)
    found.champion = found.y.copy()
    found.student[:80] = (found.y[:80] + 1) % 2  # 4 points worse
    gate = decide(found, champion={"version": 2, "accuracy": 1.0})["no_regression_vs_champion"]
    assert gate.status == "failed" and gate.value == pytest.approx(0.04)


def test_identical_to_the_champion_passes_on_enough_rows() -> None:
    found = outcomes(1000, 0, 0)
    found.champion = found.y.copy()
    gate = decide(found, champion={"version": 1, "accuracy": 1.0})["no_regression_vs_champion"]
    assert gate.status == "passed"
    few = outcomes(300, 0, 0)
    few.champion = few.y.copy()
    gate = decide(few, champion={"version": 1, "accuracy": 1.0})["no_regression_vs_champion"]
    assert gate.status == "inconclusive" and gate.evidence["rows_needed"] > 300


def test_class_regression_marks_the_class_that_dropped() -> None:
    found = outcomes(3000, 0, 0, classes=3)
    found.champion = found.y.copy()
    in_class_2 = np.flatnonzero(found.y == 2)[:300]  # class 2: 1,000 rows, 30 points worse
    found.student[in_class_2] = 0
    gate = decide(found, champion={"version": 1, "accuracy": 1.0})["max_class_regression"]
    assert gate.status == "failed" and gate.value == pytest.approx(0.3)
    classes = gate.evidence["classes"]
    assert classes["2"]["status"] == "failed" and classes["0"]["status"] == "passed"
    assert "class(es) 2" in gate.detail


def test_class_regression_inconclusive_on_a_small_class() -> None:
    found = outcomes(60, 0, 0, classes=3)  # 20 rows a class, 3 of class 1 lost: 15 points
    found.champion = found.y.copy()
    found.student[np.flatnonzero(found.y == 1)[:3]] = 0
    gate = decide(found, champion={"version": 1, "accuracy": 1.0})["max_class_regression"]
    assert gate.status == "inconclusive" and gate.evidence["classes"]["1"]["drop"] == 0.15
    assert decide(found, GateConfig(max_class_regression=0.2),
                  champion={"version": 1, "accuracy": 1.0})["max_class_regression"].passed


def test_class_regression_without_a_champion_and_failing_closed() -> None:
    assert decide(outcomes(100, 0, 0))["max_class_regression"].detail == "no champion yet"
    gate = decide(outcomes(100, 0, 0), unscored="champion v2 not compared: other classes")[
        "max_class_regression"]
    assert gate.status == "failed"


def test_agreement_gate_and_copied_errors() -> None:
    found = outcomes(1000, 0, 0)
    found.ensemble = found.y.copy()
    found.ensemble[:100] = (found.y[:100] + 1) % 2  # the ensemble wrong on 100 rows
    found.student[:60] = found.ensemble[:60]  # the student repeats 60 of those errors
    gate = decide(found)["min_agreement"]
    assert gate.status == "passed" and "off" in gate.detail  # off by default
    assert gate.evidence["copied_errors"] == pytest.approx(0.6)
    assert gate.value == pytest.approx(0.96)
    assert decide(found, GateConfig(min_agreement=0.9))["min_agreement"].passed
    assert decide(found, GateConfig(min_agreement=0.99))["min_agreement"].status == "failed"
    assert decide(found, GateConfig(min_agreement=0.965))["min_agreement"].status == \
        "inconclusive"


def test_retention_reports_its_interval() -> None:
    gate = decide(outcomes(1000, 30, 10))["retention"]
    ev = gate.evidence
    assert ev["low"] <= gate.value <= ev["high"] and ev["n"] == 1000


@pytest.mark.parametrize(("key", "value", "match"), [
    ("confidence", 1.0, "--confidence"), ("confidence", 0.3, "--confidence"),
    ("gate_test", "bootstrap", "--gate-test"), ("max_class_regression", -0.1,
                                                "--max-class-regression"),
    ("min_agreement", 2.0, "--min-agreement"),
])
def test_bad_gate_settings_name_the_option(key: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        GateConfig(**{key: value})


# --- causal LM: the same shape on test blocks' log-likelihoods ------------------------------


def lm_decide(student: np.ndarray, baseline: np.ndarray, champion: np.ndarray | None = None,
              cfg: GateConfig | None = None, tokens: int = 100) -> dict:
    from kdflow.evaluation.gates import LMOutcomes
    from kdflow.evaluation.lm_summary import lm_gates

    n = len(student)
    ppl = {k: float(np.exp(v.sum() / (tokens * n))) for k, v in
           (("student", student), ("baseline", baseline))}
    summary = {
        "student": {"perplexity": ppl["student"], "params": 10, "latency_ms": 1.0},
        "baseline": {"perplexity": ppl["baseline"]},
        "ensemble": {"perplexity": ppl["student"]},
        "teachers": [{"params": 100, "latency_ms": 2.0}],
        "champion": None if champion is None else {
            "version": 3, "perplexity": float(np.exp(champion.sum() / (tokens * n)))},
    }
    found = LMOutcomes(tokens=np.full(n, tokens), student=student, baseline=baseline,
                       champion=champion)
    return {g.name: g for g in lm_gates(cfg or GateConfig(), summary, None, found)}


def test_lm_beats_baseline_on_blocks() -> None:
    rng = np.random.default_rng(0)
    baseline = rng.normal(400.0, 30.0, 200)  # nats per block of 100 tokens: ~4.0 per token
    clear = lm_decide(baseline - 10.0 + rng.normal(0, 5, 200), baseline)
    gate = clear["beats_baseline"]
    assert gate.status == "passed" and gate.value == pytest.approx(0.1, abs=0.01)
    assert "n = 200 blocks" in gate.detail and gate.evidence["low"] > 0
    noise = lm_decide(baseline - 0.05 + rng.normal(0, 5, 200), baseline)["beats_baseline"]
    assert noise.status == "inconclusive" and "test blocks would show" in noise.detail
    worse = lm_decide(baseline + 10.0 + rng.normal(0, 5, 200), baseline)["beats_baseline"]
    assert worse.status == "failed"


def test_lm_point_mode_and_champion_non_inferiority() -> None:
    rng = np.random.default_rng(1)
    baseline = rng.normal(400.0, 30.0, 200)
    student = baseline - 0.05 + rng.normal(0, 5, 200)
    point = lm_decide(student, baseline, cfg=GateConfig(gate_test="point"))["beats_baseline"]
    assert point.passed == (point.value > 0)
    same = lm_decide(student, baseline, champion=student + rng.normal(0, 1, 200))
    assert same["no_regression_vs_champion"].status == "passed"  # within 1 % perplexity
    worse = lm_decide(student, baseline, champion=student - 20.0)  # student 20 % worse
    assert worse["no_regression_vs_champion"].status == "failed"


def test_the_evaluate_steps_gates_carry_their_evidence(run_summary: dict) -> None:
    """A real run's summary: every gate has a status agreeing with `passed`, and the paired
    gates' evidence counts the test split's rows."""
    rows = sum(run_summary["dataset"]["class_counts"]["test"].values())
    for gate in run_summary["gates"].values():
        assert gate["status"] in ("passed", "failed", "inconclusive")
        assert gate["passed"] == (gate["status"] == "passed")
    beats = run_summary["gates"]["beats_baseline"]["evidence"]
    assert beats["n"] == rows and beats["low"] <= beats["estimate"] <= beats["high"]
    agreement = run_summary["gates"]["min_agreement"]
    assert agreement["value"] == pytest.approx(run_summary["student"]["agreement"], abs=1e-4)
    assert 0.0 <= agreement["evidence"]["copied_errors"] <= 1.0
    assert run_summary["gates"]["retention"]["evidence"]["n"] == rows


def test_the_rows_needed_are_the_fewest_at_which_the_same_table_would_conclude() -> None:
    from kdflow.evaluation.gates import accuracy_rows_needed
    from kdflow.evaluation.stats import (
        accuracy_interval,
        accuracy_spread,
        paired_accuracy_test,
        rows_needed,
    )

    found = outcomes(360, 5, 1)
    test = paired_accuracy_test(found.correct("student"), found.correct("baseline"))
    needed = accuracy_rows_needed(test, 0.0, 0.95)
    assert needed is not None

    def low(n: int) -> float:
        return accuracy_interval(round(5 * n / 360), round(1 * n / 360), n)[0]

    assert low(needed) > 0 >= low(needed - 1)
    # the normal approximation promises fewer rows than the exact interval needs here
    assert rows_needed(test.estimate, accuracy_spread(5, 1, 360), 0.0) < needed
    assert accuracy_rows_needed(test, 0.02, 0.95) is None  # the estimate is not past 2 points
