"""The evaluate step's Markdown page (`kdflow.report.markdown`): every model, the ONNX
runtime, the champion, the student per class, and every gate with the verdict."""

from kdflow.config import GateConfig
from kdflow.evaluation.gates import decide_gates
from kdflow.report.markdown import report_markdown

TEACHERS = [
    {"spec": "mlp:hidden=512", "accuracy": 0.96, "params": 10_000, "latency_ms": 2.0},
    {"spec": "mlp:hidden=1024", "accuracy": 0.97, "params": 20_000, "latency_ms": 3.0},
]


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
        "max_class_regression",
        "min_agreement",
    }
    assert all(" | PASSED | " in row for name, row in rows.items() if name != "gate")
    assert "**all gates passed**" in report


def test_report_marks_the_failed_gate_and_the_verdict():
    report = report_markdown(summary_with(champion={"version": 2, "accuracy": 0.99}))
    rows = gate_rows(report)
    row = rows["no_regression_vs_champion"]
    assert "| no_regression_vs_champion | FAILED | 0.04 | <= 0.01 |" in row
    assert " | PASSED | " in rows["retention"]
    assert "**not registered: no_regression_vs_champion (failed)**" in report


def test_report_lists_every_model():
    report = report_markdown(summary_with())
    assert "| teacher `mlp:hidden=512` | 0.9600 | 10,000 | 2.000 |" in report
    assert "| teacher `mlp:hidden=1024` | 0.9700 | 20,000 | 3.000 |" in report
    assert "| ensemble | 0.9600 | – | – | – | – |" in report
    assert "| baseline `mlp:hidden=32` | 0.9000 | 1,000 | 0.500 |" in report
    assert "| student `mlp:hidden=32` | 0.9500 | 1,000 | 0.500 |" in report


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
