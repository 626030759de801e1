"""A text run, the whole pipeline under kfp.local through `kdflow run`: a BERT teacher
trained from its config with its own WordPiece, a student with half its layers taken from
it, evaluated from raw text, registered, and served from raw text by the registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.pipelines.test_local_run import LENIENT, kdflow, registry_versions
from tests.unit.text_helpers import text_frame, tiny_bert

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.e2e]


def test_a_text_run_registers_a_student_that_serves_raw_text(tmp_path: Path) -> None:
    import mlflow
    import pandas as pd

    frame = text_frame(300, 0)
    frame.to_parquet(tmp_path / "reviews.parquet")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = kdflow(
        "run", "--data", "reviews.parquet", "--text-column", "text", "--label-column", "label",
        "--max-length", "16", "--teachers", tiny_bert(2), "--student",
        "hf-from-teacher:num_hidden_layers=1", "--teacher-epochs", "2", "--student-epochs", "2",
        "--batch-size", "16", "--student-batch-size", "16", "--workers", "0", *LENIENT,
        "--tracking-uri", uri, "--model-name", "reviews", "--output", str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["teachers"][0]["spec"] == tiny_bert(2)
    assert summary["student"]["spec"] == "hf-from-teacher:num_hidden_layers=1"
    assert summary["student"]["params"] < summary["teachers"][0]["params"]
    for key in ("teachers", "student", "baseline"):
        entries = summary[key] if key == "teachers" else [summary[key]]
        for entry in entries:
            assert entry["latency_text_ms"] > 0 and entry["latency_ms"] > 0
    assert summary["student"]["onnx"]["parity"]["predictions_match"]
    assert summary["registered"]["version"] == 1
    (version,) = registry_versions(uri, "reviews")

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # another test may have pointed the registry elsewhere
    model = mlflow.pyfunc.load_model("models:/reviews@champion")
    texts = frame["text"].head(20).tolist()
    predicted = model.predict(pd.DataFrame({"text": texts}))
    assert list(predicted.columns) == ["label", "probability"]
    assert set(predicted["label"]) <= {"pos", "neg"} and len(predicted) == 20
    files = mlflow.artifacts.download_artifacts(f"models:/reviews/{version.version}",
                                                dst_path=str(tmp_path / "dl"))
    names = [p.name for p in Path(files).rglob("*") if p.is_file()]
    assert "tokenizer.json" in names and "model.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
