"""The evaluate step end to end (`kdflow.steps.evaluate`, built by
`kdflow.evaluation.summary`): every model measured, the ONNX student checked, the gates."""

import numpy as np
import pytest
import torch

from kdflow.config import GateConfig
from kdflow.models.zoo import build_classifier


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
                                     "calibration", "no_regression_vs_champion",
                                     "max_class_regression", "min_agreement"}
    # An untrained student keeps nothing of the ensemble.
    assert summary["passed"] is False
    assert summary["gates"]["retention"]["passed"] is False
    report = (tmp_path / "report.md").read_text()
    assert all(f"| {gate} | " in report for gate in summary["gates"])


def test_test_rows_predict_chunk_by_chunk_and_hold_only_a_sample(digits_dataset, monkeypatch):
    """The evaluate step's predictions stream the test split (chunks of CHUNK_ROWS rows,
    here 50): the logits are the whole split's, and the inputs held for timing and ONNX
    parity are the first SAMPLE_ROWS rows (here 30)."""
    from kdflow.data.sources import open_source
    from kdflow.evaluation import summary as evaluation
    from kdflow.evaluation.metrics import logits_on

    monkeypatch.setattr(evaluation, "CHUNK_ROWS", 50)
    monkeypatch.setattr(evaluation, "SAMPLE_ROWS", 30)
    data = open_source(str(digits_dataset))
    meta = data.meta
    torch.manual_seed(0)
    model = build_classifier("mlp:hidden=16", meta.input_shape, meta.n_classes, meta.n_features)
    rows = evaluation.TestRows(data)
    assert len(rows.y) == meta.rows["test"] > 50
    reads: list[tuple[int, int | None]] = []
    read = data.read
    monkeypatch.setattr(data, "read", lambda split, start=0, stop=None, encoder=None:
                        reads.append((start, stop)) or read(split, start, stop, encoder))
    chunked = rows.logits(model)
    whole = logits_on(model, read("test"))
    torch.testing.assert_close(chunked, whole)
    assert all(stop is not None and stop - start == 50 for start, stop in reads)
    assert len(rows.of(model).x) == len(rows.of(model).y) == 30
