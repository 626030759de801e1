"""Fixtures for the component tests: each component's `python_func` called with artifacts in
tmp_path, as kfp's executor calls it in the step's container.

kfp 2.17's `Artifact.path` is the URI itself for a local path, so a `dsl.Dataset(uri=...)` in
tmp_path needs no patched `Artifact._get_path`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kfp import dsl

from components.parameters import GROUPS, defaults, group_configs


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step's defaults (the MLflow store under ./.kdflow/) land in the test's folder."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def artifact(tmp_path: Path) -> Callable[..., Any]:
    """`artifact(dsl.Model, "model", {"spec": ...})`: an artifact whose path is in tmp_path."""

    def make(kind: type, name: str, metadata: dict[str, Any] | None = None) -> Any:
        return kind(uri=str(tmp_path / name), metadata=dict(metadata or {}))

    return make


def settings_json(**parameters: Any) -> dict[str, str]:
    """Each settings group's JSON as the settings step hands it on, from the defaults and the
    pipeline parameters given (`student_epochs=1`)."""
    values = defaults()
    unknown = set(parameters) - set(values)
    assert not unknown, f"not pipeline parameters: {unknown}"
    return dict(zip(GROUPS, group_configs({**values, **parameters}), strict=True))


@pytest.fixture
def configs() -> Callable[..., dict[str, str]]:
    """`configs(student_epochs=1)`: see `settings_json`."""
    return settings_json


@pytest.fixture
def teacher_models(small_teachers: list[Path]) -> list[dsl.Model]:
    """The two small trained teachers as the Input[List[Model]] the collected loop hands on."""
    specs = ["mlp:hidden=128", "cnn:channels=8-16,hidden=32"]
    return [dsl.Model(uri=str(folder), metadata={"spec": spec, "history": []})
            for folder, spec in zip(small_teachers, specs, strict=True)]


LENIENT = {"min_retention": 0.0, "min_gain_over_baseline": -1.0, "min_compression": 1.0,
           "min_speedup": 0.0, "max_regression": 1.0, "max_ece": 1.0,
           "max_class_regression": 1.0}


@pytest.fixture(scope="session")
def validated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """builtin:digits through the validate step: the prepared dataset and its info."""
    from kdflow.config import DataConfig
    from kdflow.steps import validate_data

    root = tmp_path_factory.mktemp("validated")
    info = validate_data(DataConfig(), 0, root / "dataset", root / "report.md")
    return root / "dataset", info


@pytest.fixture(scope="session")
def evaluated(validated, small_teachers, tmp_path_factory) -> dict[str, Any]:
    """The evaluate step on lenient gates, with two one-epoch mlp:hidden=8 models as the
    student and the baseline: its outputs, as register and skip_registration take them."""
    from components import evaluate
    from kdflow.config import TeacherConfig
    from kdflow.steps import train_teacher

    dataset, info = validated
    root = tmp_path_factory.mktemp("evaluated")
    models = {}
    for seed, role in enumerate(("student", "baseline")):
        result = train_teacher(dataset, "mlp:hidden=8", TeacherConfig(teacher_epochs=1), seed,
                               root / role)
        models[role] = dsl.Model(uri=str(root / role),
                                 metadata={"spec": "mlp:hidden=8", "history": result["history"]})
    teachers = [dsl.Model(uri=str(folder), metadata={"spec": spec})
                for folder, spec in zip(small_teachers, ["mlp:hidden=128",
                                                         "cnn:channels=8-16,hidden=32"],
                                        strict=True)]
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = settings_json(**LENIENT, tracking_uri=uri, model_name="digits")
    out = {name: kind(uri=str(root / name)) for name, kind in (
        ("metrics", dsl.Metrics), ("confusion", dsl.ClassificationMetrics),
        ("report", dsl.Markdown), ("onnx_model", dsl.Model), ("plots", dsl.HTML))}
    seeds = dsl.Model(uri=str(root / "seed_models"))  # one seed: nothing in it
    passed, summary = evaluate.make("kdflow:test").python_func(
        dataset=dsl.Dataset(uri=str(dataset)), teachers=teachers,
        student_model=models["student"], baseline_model=models["baseline"],
        seed_models=seeds, dataset_info=json.dumps(info), gate_config=cfg["gate_config"],
        registry_config=cfg["registry_config"], **out)
    return {"passed": passed, "summary": summary, "configs": cfg, "tracking_uri": uri,
            "dataset": dataset, "teachers": teachers, **models, **out}
