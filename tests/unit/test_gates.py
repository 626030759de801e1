"""The registration gates (`kdflow.evaluation.gates`) on point estimates (no per-row
outcomes, as `--gate-test point` decides), one test per path: each gate passes at its
threshold and fails beyond it, with the value, threshold and detail a report shows. The
statistical decisions are tests/unit/test_gate_statistics.py."""

from kdflow.config import GateConfig
from kdflow.evaluation.gates import decide_gates

TEACHERS = [
    {"spec": "mlp:hidden=512", "accuracy": 0.96, "params": 10_000, "latency_ms": 2.0},
    {"spec": "mlp:hidden=1024", "accuracy": 0.97, "params": 20_000, "latency_ms": 3.0},
]


def gates(
    *,
    student_acc=0.95,
    baseline_acc=0.90,
    ensemble_acc=0.96,
    student_params=1_000,
    student_latency=0.5,
    student_ece=0.03,
    champion=None,
    cfg=None,
):
    student = {
        "accuracy": student_acc,
        "params": student_params,
        "latency_ms": student_latency,
        "ece": student_ece,
    }
    result = decide_gates(
        cfg or GateConfig(),
        student=student,
        baseline={"accuracy": baseline_acc},
        ensemble_acc=ensemble_acc,
        teachers=TEACHERS,
        champion=champion,
    )
    return {g.name: g for g in result}


def test_every_gate_passes_for_a_good_student():
    result = gates()
    assert list(result) == [
        "retention",
        "beats_baseline",
        "compression",
        "speedup",
        "calibration",
        "no_regression_vs_champion",
        "max_class_regression",
        "min_agreement",
    ]
    assert all(g.passed for g in result.values())


def test_retention_gate_passes_at_the_threshold():
    gate = gates(student_acc=0.97, ensemble_acc=1.0)["retention"]
    assert (gate.passed, gate.value, gate.threshold, gate.op) == (True, 0.97, 0.97, ">=")


def test_retention_gate_fails_when_student_keeps_too_little_of_the_ensemble():
    gate = gates(student_acc=0.90, ensemble_acc=1.0)["retention"]
    assert (gate.passed, gate.value, gate.threshold) == (False, 0.9, 0.97)
    assert gate.detail == "student 0.9000 / ensemble 1.0000"


def test_retention_gate_fails_when_ensemble_accuracy_is_zero():
    gate = gates(student_acc=0.5, ensemble_acc=0.0)["retention"]
    assert (gate.passed, gate.value) == (False, 0.0)


def test_gate_passes_when_student_beats_baseline():
    gate = gates(student_acc=0.95, baseline_acc=0.90)["beats_baseline"]
    assert (gate.passed, gate.value, gate.threshold, gate.op) == (True, 0.05, 0.0, ">")


def test_gate_fails_when_student_below_baseline():
    gate = gates(student_acc=0.88, baseline_acc=0.90)["beats_baseline"]
    assert (gate.passed, gate.value) == (False, -0.02)


def test_gate_fails_when_student_only_ties_baseline():
    assert not gates(student_acc=0.90, baseline_acc=0.90)["beats_baseline"].passed


def test_gate_fails_when_gain_is_below_the_configured_minimum():
    cfg = GateConfig(min_gain_over_baseline=0.1)
    gate = gates(student_acc=0.95, baseline_acc=0.90, cfg=cfg)["beats_baseline"]
    assert (gate.passed, gate.threshold) == (False, 0.1)


def test_compression_gate_passes_against_the_smallest_teacher():
    gate = gates(student_params=2_000)["compression"]
    assert (gate.passed, gate.value, gate.threshold, gate.op) == (True, 5.0, 5.0, ">=")


def test_compression_gate_fails_when_student_is_not_small_enough():
    gate = gates(student_params=4_000)["compression"]
    assert (gate.passed, gate.value) == (False, 2.5)


def test_speedup_gate_passes_against_the_fastest_teacher():
    gate = gates(student_latency=0.5)["speedup"]
    assert (gate.passed, gate.value, gate.threshold, gate.op) == (True, 4.0, 1.0, ">=")
    assert gate.detail == "fastest teacher 2.000 ms / student 0.500 ms"


def test_speedup_gate_fails_when_student_is_slower_than_the_fastest_teacher():
    gate = gates(student_latency=4.0)["speedup"]
    assert (gate.passed, gate.value) == (False, 0.5)


def test_gate_passes_without_champion():
    gate = gates(champion=None)["no_regression_vs_champion"]
    assert (gate.passed, gate.value, gate.threshold, gate.op) == (True, None, 0.01, "<=")
    assert gate.detail == "no champion yet"


def test_gate_fails_closed_when_the_champion_cannot_be_scored():

    reason = "champion v2 not compared: it reads 4 features; this data has 5"
    (gate,) = [g for g in decide_gates(
        GateConfig(), student={"accuracy": 0.9, "params": 10, "latency_ms": 1.0, "ece": 0.01},
        baseline={"accuracy": 0.8}, ensemble_acc=0.9,
        teachers=[{"params": 100, "latency_ms": 2.0}], champion=None, champion_unscored=reason,
    ) if g.name == "no_regression_vs_champion"]
    assert (gate.passed, gate.value) == (False, None)
    assert gate.detail.startswith(reason) and "kdflow promote" in gate.detail


def test_regression_gate_passes_when_student_beats_champion():
    gate = gates(student_acc=0.95, champion={"version": 3, "accuracy": 0.93})[
        "no_regression_vs_champion"
    ]
    assert (gate.passed, gate.value) == (True, -0.02)


def test_regression_gate_passes_when_champion_better_within_margin():
    cfg = GateConfig(max_regression=0.05)
    gate = gates(student_acc=0.95, champion={"version": 3, "accuracy": 0.97}, cfg=cfg)
    assert gate["no_regression_vs_champion"].passed


def test_regression_gate_fails_when_champion_better_by_more_than_margin():
    gate = gates(student_acc=0.95, champion={"version": 3, "accuracy": 0.97})[
        "no_regression_vs_champion"
    ]
    assert (gate.passed, gate.value, gate.threshold, gate.op) == (False, 0.02, 0.01, "<=")
    assert gate.detail == "champion v3 0.9700 - student 0.9500"


def test_regression_gate_passes_when_drop_equals_the_margin():
    gate = gates(student_acc=0.94, champion={"version": 3, "accuracy": 0.95})[
        "no_regression_vs_champion"
    ]
    assert (gate.value, gate.threshold) == (0.01, 0.01)
    assert gate.passed


def test_calibration_gate_passes_at_the_ceiling():
    gate = gates(student_ece=0.1)["calibration"]
    assert (gate.passed, gate.value, gate.threshold, gate.op) == (True, 0.1, 0.1, "<=")


def test_calibration_gate_fails_when_the_student_is_overconfident():
    gate = gates(student_ece=0.25)["calibration"]
    assert (gate.passed, gate.value) == (False, 0.25)
    assert gate.detail == "expected calibration error of the student (15 bins)"


def test_calibration_ceiling_is_configurable():
    assert gates(student_ece=0.25, cfg=GateConfig(max_ece=0.3))["calibration"].passed
