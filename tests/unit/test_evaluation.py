"""The registration gates, one test per path; the quality and cost metrics; the report;
the evaluate step end to end."""

import numpy as np
import pytest
import torch

from kdflow.config import GateConfig
from kdflow.errors import ConfigError
from kdflow.evaluation.metrics import (
    accuracy_of_logits,
    confusion_matrix,
    cpu_latency_ms,
    cpu_timings,
    decide_gates,
    ensemble_accuracy,
    expected_calibration_error,
    flops_per_sample,
    macro_f1,
    negative_log_likelihood,
    quality_metrics,
    report_markdown,
    torch_runner,
)
from kdflow.models.zoo import build_classifier

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
        student={"accuracy": student_acc, "params": 1_000, "latency_ms": 0.5, "ece": 0.03},
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
        "calibration",
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
    assert "| ensemble | 0.9600 | – | – | – | – |" in report
    assert "| baseline `mlp:hidden=32` | 0.9000 | 1,000 | 0.500 |" in report
    assert "| student `mlp:hidden=32` | 0.9500 | 1,000 | 0.500 |" in report


# --------------------------------------------------------------------------- calibration gate


def test_calibration_gate_passes_at_the_ceiling():
    gate = gates(student_ece=0.1)["calibration"]
    assert (gate.passed, gate.value, gate.threshold, gate.op) == (True, 0.1, 0.1, "<=")


def test_calibration_gate_fails_when_the_student_is_overconfident():
    gate = gates(student_ece=0.25)["calibration"]
    assert (gate.passed, gate.value) == (False, 0.25)
    assert gate.detail == "expected calibration error of the student (15 bins)"


def test_calibration_ceiling_is_configurable():
    assert gates(student_ece=0.25, cfg=GateConfig(max_ece=0.3))["calibration"].passed


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_calibration_ceiling_outside_zero_one_is_refused(value):
    with pytest.raises(ConfigError, match=rf"^--max-ece: must be in \[0, 1\], got {value}$"):
        GateConfig(max_ece=value)


# ------------------------------------------------------------------------------ quality


def test_confusion_matrix_has_true_classes_as_rows():
    matrix = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 0, 1, 2]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_macro_f1_matches_scikit_learn_including_a_never_predicted_class():
    from sklearn.metrics import f1_score

    y = np.array([0, 0, 1, 1, 2, 2, 3])
    pred = np.array([0, 1, 1, 1, 2, 0, 0])
    expected = f1_score(y, pred, average="macro", labels=[0, 1, 2, 3], zero_division=0)
    assert macro_f1(confusion_matrix(pred, y, 4)) == pytest.approx(expected)


def test_ece_weighs_each_bin_gap_by_its_share_of_rows():
    # Confidences 0.9 (right), 0.6 (wrong), 0.8 (right) fall in three bins:
    # (|1 - 0.9| + |0 - 0.6| + |1 - 0.8|) / 3 = 0.3
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2]])
    assert expected_calibration_error(probs, np.array([0, 1, 0])) == pytest.approx(0.3)


def test_ece_is_zero_for_confident_correct_predictions():
    probs = np.eye(3)[[0, 1, 2, 1]]
    assert expected_calibration_error(probs, np.array([0, 1, 2, 1])) == 0.0


def test_nll_is_the_mean_cross_entropy_of_the_true_class():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    y = np.array([0, 1])
    expected = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).item()
    nll = negative_log_likelihood(torch.softmax(logits, -1).numpy().astype(np.float64), y)
    assert nll == pytest.approx(expected, rel=1e-6)


def test_quality_metrics_report_agreement_and_per_class_accuracy_by_name():
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    metrics = quality_metrics(probs, np.array([0, 1, 1, 1]), ["cat", "dog"],
                              reference_pred=np.array([0, 0, 0, 1]))
    assert metrics["accuracy"] == 0.75
    assert metrics["agreement"] == 0.75  # rows 0, 2, 3 agree with the reference
    assert metrics["per_class_accuracy"] == {"cat": 1.0, "dog": pytest.approx(2 / 3)}
    assert metrics["confusion_matrix"] == [[1, 0], [1, 2]]
    assert "agreement" not in quality_metrics(probs, np.array([0, 1, 1, 1]), ["cat", "dog"])


# --------------------------------------------------------------------------------- cost


def test_flops_count_each_multiply_add_of_the_linear_layers_twice():
    model = build_classifier("mlp:hidden=16", [64], 10, 64)
    assert flops_per_sample(model, 64) == 2 * (64 * 16 + 16 * 10)


def test_cpu_timings_give_p50_p95_and_throughput_for_any_runner():
    model = build_classifier("mlp:hidden=8", [16], 3, 16)
    calls = []

    def numpy_runner(x):
        calls.append(x.shape[0])
        return x.sum()

    timings = cpu_timings(
        {"torch": torch_runner(model), "numpy": numpy_runner}, 16, repeats=20, warmup=2,
        batch_repeats=3, batch_size=32,
    )
    for t in timings.values():
        assert 0 < t.latency_ms <= t.latency_p95_ms
        assert t.throughput_per_s > 0
    assert calls.count(32) == 4  # one warm-up and three timed batches
    untimed = cpu_timings({"torch": torch_runner(model)}, 16, repeats=2, warmup=1,
                          batch_repeats=0)
    assert untimed["torch"].throughput_per_s is None


# ------------------------------------------------------------------------------- report


def test_report_shows_onnx_runtime_and_the_students_classes():
    summary = summary_with()
    summary["student"].update(
        latency_p95_ms=0.9, throughput_per_s=50_000.0, file_bytes=5_120,
        per_class_accuracy={"cat": 1.0, "dog": 0.5}, confusion_matrix=[[3, 0], [2, 2]],
    )
    summary["student"]["onnx"] = {
        "latency_ms": 0.25, "latency_p95_ms": 0.4, "throughput_per_s": 80_000.0,
        "file_bytes": 10_240, "parity": {"rows": 7, "predictions_match": True,
                                         "max_abs_diff": 1e-6},
    }
    report = report_markdown(summary)
    assert "| PyTorch | 0.500 | 0.900 | 50,000 | 5.0 |" in report
    assert "| ONNX Runtime | 0.250 | 0.400 | 80,000 | 10.0 |" in report
    assert "ONNX Runtime is 2.00× PyTorch's batch-1 speed. Same predictions on all 7" in report
    assert "| dog | 0.5000 | 2 | 2 |" in report
    assert report.index("## Student per class") < report.index("## Gates")


def test_report_names_the_champion_it_compared_with():
    report = report_markdown({**summary_with(), "champion": {"version": 4, "accuracy": 0.93}})
    assert "Current `champion`: version 4, accuracy 0.9300 on this test split." in report
    assert "No `champion` yet." in report_markdown({**summary_with(), "champion": None})


# ------------------------------------------------------------------------ evaluate step


@pytest.mark.slow
def test_evaluate_step_measures_every_model_and_checks_the_onnx_student(
    digits_dataset, small_teachers, tmp_path
):
    from kdflow.data.prepared import read_meta
    from kdflow.models.artifacts import save_model
    from kdflow.steps import evaluate

    meta = read_meta(digits_dataset)
    for name in ("student", "baseline"):
        torch.manual_seed(0)
        model = build_classifier("mlp:hidden=16", meta.input_shape, meta.n_classes,
                                 meta.n_features)
        save_model(model, tmp_path / name, meta.classes, meta.feature_columns)
    summary = evaluate(
        digits_dataset, small_teachers, tmp_path / "student", tmp_path / "baseline",
        GateConfig(), f"sqlite:///{tmp_path / 'mlflow.db'}", "digits",
        {"sha256": meta.sha256}, tmp_path / "report.md",
        teacher_sources=["mlp:hidden=128", ""], onnx_dir=tmp_path / "onnx",
    )
    student = summary["student"]
    for key in ("accuracy", "macro_f1", "ece", "nll", "agreement", "latency_ms",
                "latency_p95_ms", "throughput_per_s", "file_bytes", "flops", "params"):
        assert student[key] is not None and student[key] >= 0, key
    assert student["flops"] == 2 * (64 * 16 + 16 * 10)
    assert student["file_bytes"] == (tmp_path / "student" / "model.safetensors").stat().st_size
    assert list(student["per_class_accuracy"]) == meta.classes
    assert np.array(student["confusion_matrix"]).sum() == meta.rows["test"]
    onnx = student["onnx"]
    assert onnx["parity"]["predictions_match"] and onnx["parity"]["rows"] == meta.rows["test"]
    assert onnx["file_bytes"] == (tmp_path / "onnx" / "model.onnx").stat().st_size
    assert [t["spec"] for t in summary["teachers"]] == ["mlp:hidden=128",
                                                        "cnn:channels=8-16,hidden=32"]
    assert set(summary["ensemble"]) == {"accuracy", "macro_f1", "ece", "nll",
                                        "per_class_accuracy", "reliability"}
    assert (summary["champion"], summary["champion_seen"]) == (None, None)
    assert set(summary["gates"]) == {"retention", "beats_baseline", "compression", "speedup",
                                     "calibration", "no_regression_vs_champion"}
    # An untrained student keeps nothing of the ensemble.
    assert summary["passed"] is False
    assert summary["gates"]["retention"]["passed"] is False
    report = (tmp_path / "report.md").read_text()
    assert all(f"| {gate} | " in report for gate in summary["gates"])
