"""validate_data: the prepared dataset, its report and Data Docs, and the teacher plan."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from kfp import dsl

from components import validate_data
from kdflow.errors import DataValidationError

validate = validate_data.make("kdflow:test").python_func


def run(artifact, configs, tmp_path: Path, **parameters) -> tuple[list[dict], dict]:
    out = {name: artifact(kind, name) for name, kind in (
        ("dataset", dsl.Dataset), ("report", dsl.Markdown), ("data_docs", dsl.HTML),
        ("profile", dsl.HTML), ("metrics", dsl.Metrics))}
    cfg = configs(**parameters)
    plan = validate(data_config=cfg["data_config"], teacher_config=cfg["teacher_config"],
                    seed=3, tracking_uri="", run_id="", info=str(tmp_path / "info"),
                    passed=str(tmp_path / "passed"), **out)
    return plan, out


def test_digits_are_prepared_reported_and_planned_as_three_teachers(artifact, configs, tmp_path):
    plan, out = run(artifact, configs, tmp_path)
    assert (Path(out["dataset"].path) / "meta.json").exists()
    assert out["dataset"].metadata["rows"] == 1797
    assert len(out["dataset"].metadata["sha256"]) == 64
    assert out["metrics"].metadata["classes"] == 10
    assert out["metrics"].metadata["validation_failures"] == 0
    assert "<html" in Path(out["data_docs"].path).read_text().lower()
    assert Path(out["report"].path).read_text().startswith("#")
    info = json.loads((tmp_path / "info").read_text())
    assert info["input_shape"] == [1, 8, 8] and info["passed"] is True
    assert json.loads((tmp_path / "passed").read_text()) is True
    # `auto`: teachers that fit 1x8x8 images, each with its own seed and its position.
    assert [m["index"] for m in plan] == [0, 1, 2]
    assert all(m["spec"].startswith("cnn") for m in plan)
    assert len({m["seed"] for m in plan}) == 3
    assert {json.loads(m["teacher_config"])["teacher_epochs"] for m in plan} == {40}


def test_listed_teachers_are_planned_in_order(artifact, configs, tmp_path):
    plan, _ = run(artifact, configs, tmp_path, teachers=["mlp:hidden=8", "mlp:hidden=8"])
    assert [(m["spec"], m["index"]) for m in plan] == [("mlp:hidden=8", 0), ("mlp:hidden=8", 1)]
    assert plan[0]["seed"] != plan[1]["seed"]  # the same spec twice trains two models


def test_bad_data_fails_naming_the_column_and_still_leaves_its_report(artifact, configs,
                                                                      tmp_path):
    frame = pd.DataFrame({"px": [0.1 * i for i in range(60)],
                          "label": [i % 2 for i in range(60)]})
    frame.loc[3, "px"] = float("inf")
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataValidationError, match="px has 1 infinite values"):
        run(artifact, configs, tmp_path, data=str(tmp_path / "bad.csv"))
    assert "| 3 | 1 | inf |" in (tmp_path / "report").read_text()
    assert (tmp_path / "data_docs").read_text()  # the page the Kubeflow UI shows
    assert not (tmp_path / "info").exists()


def test_in_a_pipeline_pod_without_a_tracking_uri_the_step_stops_naming_the_config_map(
        artifact, configs, tmp_path, monkeypatch):
    """On a cluster the pod gets MLFLOW_TRACKING_URI from the kdflow-config ConfigMap; a step
    with none must not fall back to a sqlite file inside the pod, lost with it."""
    from kdflow.errors import ConfigError

    monkeypatch.setenv("KFP_POD_NAME", "kdflow-distillation-abc-validate-data")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = {name: artifact(kind, name) for name, kind in (
        ("dataset", dsl.Dataset), ("report", dsl.Markdown), ("data_docs", dsl.HTML),
        ("profile", dsl.HTML), ("metrics", dsl.Metrics))}
    cfg = configs()
    with pytest.raises(ConfigError, match="kdflow-config ConfigMap"):
        validate(data_config=cfg["data_config"], teacher_config=cfg["teacher_config"],
                 seed=3, tracking_uri="", run_id="job-1", info=str(tmp_path / "info"),
                 passed=str(tmp_path / "passed"), **out)
    assert not (tmp_path / ".kdflow").exists(), "no store may be created in the pod"
