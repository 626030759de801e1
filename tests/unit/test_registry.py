"""What registration records besides the model: the evaluation summary as MLflow metrics.

Registration end to end (upload, version, aliases, clean failure) runs against real servers
in tests/integration/test_registry_servers.py.
"""

from __future__ import annotations

from kdflow.mlflow.registry import summary_metrics


def test_summary_metrics_name_every_number_for_mlflow():
    summary = {
        "student": {"accuracy": 0.9, "ece": 0.02, "params": 1210, "per_class_accuracy":
                    {"setosa": 1.0, "versi/color (x)": 0.8},
                    "onnx": {"latency_ms": 0.04, "parity": {"rows": 3}}},
        "baseline": {"accuracy": 0.8},
        "ensemble": {"accuracy": 0.95},
        "teachers": [{"accuracy": 0.96, "params": 9610}],
        "champion": None,
        "gates": {"retention": {"value": 0.94}, "no_regression_vs_champion": {"value": None}},
    }
    assert summary_metrics(summary) == {
        "student_accuracy": 0.9,
        "student_ece": 0.02,
        "student_params": 1210.0,
        "onnx_latency_ms": 0.04,
        "student_class_accuracy/setosa": 1.0,
        "student_class_accuracy/versi/color _x_": 0.8,
        "baseline_accuracy": 0.8,
        "ensemble_accuracy": 0.95,
        "teacher0_accuracy": 0.96,
        "teacher0_params": 9610.0,
        "gate_retention": 0.94,
    }
