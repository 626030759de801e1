"""The registration gates, one test per path, plus latency and the Markdown report."""

import torch

from kdflow.config import GateConfig
from kdflow.evaluation import (
    accuracy_of_logits,
    cpu_latency_ms,
    decide_gates,
    ensemble_accuracy,
    report_markdown,
)
from kdflow.models import build_classifier

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
    champion=None,
    cfg=None,
):
    student = {"accuracy": student_acc, "params": student_params, "latency_ms": student_latency}
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
        "no_regression_vs_champion",
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


def test_accuracy_of_logits_counts_argmax_hits():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0], [0.0, 1.0]])
    assert accuracy_of_logits(logits, torch.tensor([0, 1, 1, 1]).numpy()) == 0.75


def test_ensemble_accuracy_averages_probabilities_not_votes():
    # Teacher A is sure of class 0, B mildly prefers class 1: the mean of probabilities says 0.
    a = torch.tensor([[10.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    assert ensemble_accuracy([a, b], torch.tensor([0]).numpy()) == 1.0


def test_cpu_latency_is_positive_and_bigger_model_is_slower():
    torch.manual_seed(0)
    models = {
        "big": build_classifier("mlp:hidden=2048-2048", [64], 10, 64),
        "small": build_classifier("mlp:hidden=8", [64], 10, 64),
    }
    latency = cpu_latency_ms(models, 64, repeats=30, warmup=3)
    assert set(latency) == {"big", "small"}
    assert latency["small"] > 0
    assert latency["big"] > 3 * latency["small"]


def test_cpu_latency_restores_the_thread_count():
    before = torch.get_num_threads()
    cpu_latency_ms({"m": build_classifier("mlp:hidden=4", [4], 2, 4)}, 4, repeats=2, warmup=1)
    assert torch.get_num_threads() == before


def summary_with(champion=None, student_acc=0.95):
    result = decide_gates(
        GateConfig(),
        student={"accuracy": student_acc, "params": 1_000, "latency_ms": 0.5},
        baseline={"accuracy": 0.90},
        ensemble_acc=0.96,
        teachers=TEACHERS,
        champion=champion,
    )
    return {
        "teachers": TEACHERS,
        "ensemble": {"accuracy": 0.96},
        "baseline": {"spec": "mlp:hidden=32", "accuracy": 0.90, "params": 1_000, "latency_ms": 0.5},
        "student": {
            "spec": "mlp:hidden=32",
            "accuracy": student_acc,
            "params": 1_000,
            "latency_ms": 0.5,
        },
        "gates": {g.name: {k: v for k, v in g.to_dict().items() if k != "name"} for g in result},
        "passed": all(g.passed for g in result),
    }


def gate_rows(markdown):
    rows = markdown.split("## Gates")[1].splitlines()
    return {r.split(" | ")[0].strip("| "): r for r in rows if r.startswith("| ") and "---" not in r}


def test_report_lists_every_gate_with_pass():
    report = report_markdown(summary_with())
    rows = gate_rows(report)
    assert set(rows) - {"gate"} == {
        "retention",
        "beats_baseline",
        "compression",
        "speedup",
        "no_regression_vs_champion",
    }
    assert all(" | PASS | " in row for name, row in rows.items() if name != "gate")
    assert "**all gates passed**" in report


def test_report_marks_the_failed_gate_and_the_verdict():
    report = report_markdown(summary_with(champion={"version": 2, "accuracy": 0.99}))
    rows = gate_rows(report)
    assert (
        "| no_regression_vs_champion | FAIL | 0.04 | <= 0.01 |" in rows["no_regression_vs_champion"]
    )
    assert " | PASS | " in rows["retention"]
    assert "**a gate failed: not registered**" in report


def test_report_lists_every_model():
    report = report_markdown(summary_with())
    assert "| teacher `mlp:hidden=512` | 0.9600 | 10,000 | 2.000 |" in report
    assert "| teacher `mlp:hidden=1024` | 0.9700 | 20,000 | 3.000 |" in report
    assert "| ensemble | 0.9600 | | |" in report
    assert "| baseline `mlp:hidden=32` | 0.9000 | 1,000 | 0.500 |" in report
    assert "| student `mlp:hidden=32` | 0.9500 | 1,000 | 0.500 |" in report
