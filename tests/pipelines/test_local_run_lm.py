"""A causal-lm run, the whole pipeline under kfp.local through `kdflow run`: a GPT-2 teacher
trained from its config with a BPE of its own, a student with half its layers taken from
it, distilled token by token from cached top-k log-probabilities, evaluated by perplexity,
registered, and generating text from the registry; the next evaluation compares its
student with that champion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.pipelines.test_local_run import LENIENT, kdflow, registry_versions
from tests.unit.lm_helpers import corpus_frame, tiny_gpt2

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.e2e]


def test_a_causal_lm_run_registers_a_student_that_generates(tmp_path: Path) -> None:
    import mlflow
    import pandas as pd

    corpus_frame(120).to_parquet(tmp_path / "corpus.parquet")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [
        "run", "--task", "causal-lm", "--data", "corpus.parquet", "--text-column", "text",
        "--max-length", "32", "--teachers", tiny_gpt2(2), "--student", "hf-from-teacher:n_layer=1",
        "--teacher-epochs", "2", "--student-epochs", "2", "--batch-size", "16",
        "--student-batch-size", "16", "--workers", "0", *LENIENT, "--max-perplexity-ratio",
        "100", "--tracking-uri", uri, "--model-name", "words",
    ]
    proc = kdflow(*common, "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["task"] == "causal-lm"
    for entry in [*summary["teachers"], summary["ensemble"], summary["baseline"],
                  summary["student"]]:
        assert entry["perplexity"] > 1.0 and 0.0 <= entry["token_accuracy"] <= 1.0
    assert summary["student"]["tokens_per_s"] > 0
    assert summary["student"]["params"] < summary["teachers"][0]["params"]
    assert 0.0 <= summary["student"]["agreement"] <= 1.0
    assert set(summary["gates"]) == {"perplexity_retention", "beats_baseline", "compression",
                                     "speedup", "no_regression_vs_champion"}
    assert summary["student"]["continuations"][0]["prompt"]
    report = (tmp_path / "out" / "report.html").read_text()
    assert "perplexity" in report.lower()
    assert summary["registered"]["version"] == 1
    (version,) = registry_versions(uri, "words")

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model("models:/words@champion")
    out = model.predict(pd.DataFrame({"prompt": ["the cat sat", "a bird"]}),
                        params={"max_new_tokens": 5})
    assert list(out.columns) == ["completion"] and len(out) == 2
    assert all(isinstance(c, str) for c in out["completion"])
    files = mlflow.artifacts.download_artifacts(f"models:/words/{version.version}",
                                                dst_path=str(tmp_path / "dl"))
    names = [p.name for p in Path(files).rglob("*") if p.is_file()]
    assert "tokenizer.json" in names and "model.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]

    # The next run's evaluate step scores the champion on its own test split, by
    # perplexity (in-process, on this run's artifacts: the same models, one more version).
    from kdflow.config import GateConfig
    from kdflow.evaluation.summary import evaluate_models

    run = next((tmp_path / "out" / "pipeline").iterdir())
    teacher = next(run.glob("for-loop-*/train-teacher/model"))
    second = evaluate_models(
        run / "validate-data" / "dataset", [teacher], run / "distill" / "student_model",
        run / "distill" / "baseline_model", GateConfig(), uri, "words", summary["dataset"],
    )
    assert second["champion"]["version"] == 1
    assert second["champion"]["perplexity"] == pytest.approx(summary["student"]["perplexity"],
                                                             rel=1e-6)
    gate = second["gates"]["no_regression_vs_champion"]
    assert gate["passed"] and gate["value"] == pytest.approx(0.0, abs=1e-6)
