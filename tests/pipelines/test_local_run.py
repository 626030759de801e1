"""The whole pipeline under kfp.local's SubprocessRunner, through the `kdflow run` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST = ["--teacher-epochs", "2", "--student-epochs", "2", "--teachers", "mlp:hidden=128",
        "cnn:channels=8-16,hidden=32", "--student", "mlp:hidden=16"]
LENIENT = ["--min-retention", "0", "--min-gain-over-baseline", "-1", "--min-speedup", "0",
           "--max-ece", "1", "--min-compression", "1",
           "--max-regression", "1", "--max-class-regression", "1"]


def kdflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900,
                          env=_env(cwd))


def _env(cwd: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(Path(__file__).parents[2])
    env["GX_ANALYTICS_ENABLED"] = "false"
    return env


def registry_versions(tracking_uri: str, name: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return client.search_model_versions(f"name='{name}'")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str], str]:
    root = tmp_path_factory.mktemp("local-run")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    proc = kdflow("run", *FAST, *LENIENT, "--tracking-uri", uri, "--model-name", "digits",
                  "--output", str(root / "out"), cwd=root)
    return root, proc, uri


def test_run_writes_summary_with_every_documented_field(first_run):
    root, proc, _ = first_run
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert len(summary["dataset"]["sha256"]) == 64
    assert summary["dataset"]["rows"] == 1797
    assert [t["spec"] for t in summary["teachers"]] == ["mlp:hidden=128",
                                                        "cnn:channels=8-16,hidden=32"]
    for t in summary["teachers"]:
        assert 0 <= t["accuracy"] <= 1 and t["params"] > 0
    for key in ("ensemble", "baseline", "student"):
        assert 0 <= summary[key]["accuracy"] <= 1
    assert summary["student"]["params"] == summary["baseline"]["params"] > 0
    assert summary["student"]["latency_ms"] > 0
    assert set(summary["gates"]) == {"retention", "beats_baseline", "compression", "speedup",
                                     "calibration", "no_regression_vs_champion",
                                     "max_class_regression", "min_agreement"}
    for gate in summary["gates"].values():
        assert {"passed", "value", "threshold"} <= set(gate)
    assert summary["passed"] is True
    # Every curve reached the summary: teachers' epochs, and the students' from Ray Train.
    history = summary["history"]
    assert [len(h) for h in history["teachers"]] == [2, 2]
    assert [e["epoch"] for e in history["student"]] == [1, 2]
    assert all(e["soft_loss"] > 0 for e in history["student"])
    assert all(e["soft_loss"] == 0 for e in history["baseline"])


def test_run_leaves_its_report_pictures_and_paths(first_run):
    root, proc, uri = first_run
    out = root / "out"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6
    assert {p.name for p in (out / "plots").glob("*.png")} == {
        "confusion_matrix.png", "data_profile.png", "per_class_accuracy.png",
        "reliability.png", "training_curves.png", "tradeoff.png"}
    lines = proc.stdout.splitlines()
    assert f"  report: {out / 'report.html'}" in lines
    assert any(line.startswith("    distill epochs: 2/2") for line in lines)
    assert any(line.startswith("MLflow run: http://127.0.0.1:5000/#/experiments/")
               for line in lines)
    student = next(line for line in lines if line.startswith("  student model: "))
    assert (Path(student.split(": ", 1)[1]) / "model.safetensors").exists()
    # The register step put the page and the pictures next to the student in MLflow.
    from mlflow import MlflowClient

    run_id = json.loads((out / "summary.json").read_text())["registered"]["run_id"]
    client = MlflowClient(uri)
    assert "report/report.html" in [f.path for f in client.list_artifacts(run_id, "report")]
    assert len(client.list_artifacts(run_id, "report/plots")) == 6


def test_run_registers_student_as_champion_and_it_serves(first_run):
    root, proc, uri = first_run
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert summary["registered"]["name"] == "digits"
    assert summary["registered"]["version"] == 1
    assert summary["registered"]["aliases"] == ["challenger", "champion"]
    assert "registered digits version 1" in proc.stdout
    from mlflow import MlflowClient

    # One MLflow run per pipeline run: the validate step opened it, the student went into it.
    run = MlflowClient(uri).get_run(summary["registered"]["run_id"])
    assert run.data.tags["kdflow.validation_passed"] == "true"
    assert run.data.tags["kdflow.dataset_sha256"] == summary["dataset"]["sha256"]
    assert run.data.metrics["validation_failures"] == 0
    assert run.inputs.dataset_inputs[0].dataset.digest == summary["dataset"]["sha256"][:36]
    # The distill step's curves, one point per epoch (FAST trains the students 2 epochs).
    curve = MlflowClient(uri).get_metric_history(run.info.run_id, "student/val_accuracy")
    assert [m.step for m in curve] == [1, 2]
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model("models:/digits@champion")
    from sklearn.datasets import load_digits

    digits = load_digits()
    frame = pd.DataFrame(digits.data[:50].astype("float32"),
                         columns=[f"px{i}" for i in range(64)])
    predictions = model.predict(frame)
    assert list(predictions.columns) == ["label", "probability"]
    agree = (predictions["label"].astype(int).to_numpy() == digits.target[:50]).mean()
    assert agree > 0.5


def test_failed_gate_runs_the_else_branch_and_registers_nothing(first_run):
    root, _, uri = first_run
    # In-process distillation (--workers 0) through kfp.local, the same pipeline otherwise.
    proc = kdflow("run", *FAST, *LENIENT, "--min-compression", "1000", "--tracking-uri", uri,
                  "--model-name", "digits", "--output", str(root / "strict"), "--json",
                  "--workers", "0", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((root / "strict" / "summary.json").read_text())
    assert [e["epoch"] for e in summary["history"]["student"]] == [1, 2]
    # --json: the summary and nothing else on stdout, nothing on stderr.
    assert json.loads(proc.stdout) == summary
    assert proc.stderr == ""
    # Nothing registered, so `kdflow run` put the report on the run validate-data opened.
    from mlflow import MlflowClient

    logged = MlflowClient(uri).list_artifacts(summary["dataset"]["mlflow_run_id"], "report")
    assert "report/report.html" in [f.path for f in logged]
    assert summary["passed"] is False
    assert summary["gates"]["compression"]["passed"] is False
    assert summary["registered"] is None
    assert len(registry_versions(uri, "digits")) == 1  # still only the first run's version
    # The run that registered nothing still left its validation record in MLflow.
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`kdflow.validation_passed` = 'true'")
    assert len(runs) == 2


def test_bad_data_stops_before_any_teacher_trains(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    frame = pd.DataFrame(digits.data[:300], columns=[f"px{i}" for i in range(64)])
    frame["label"] = digits.target[:300]
    frame.loc[5, "px3"] = float("inf")
    frame.loc[9, "px7"] = float("nan")
    frame.to_csv(tmp_path / "bad.csv", index=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = kdflow("run", "--data", "bad.csv", "--input-shape", "1,8,8", *FAST,
                  "--tracking-uri", uri, "--output",
                  str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""  # --quiet: only the errors, on stderr
    assert "validate-data failed" in proc.stderr
    assert "px3" in proc.stderr and "px7" in proc.stderr
    assert "nothing was registered" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "out" / "pipeline").glob("*/*/train-teacher"))
    assert not (tmp_path / "out" / "summary.json").exists()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # not a registry set earlier
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.tags["kdflow.validation_passed"] == "false"
    assert run.data.metrics["validation_failures"] >= 2
    assert not client.search_registered_models()
