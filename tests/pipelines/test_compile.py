"""The compiled pipeline: checked in, current, and complete for the Kubeflow UI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kfp import compiler

from pipelines.distillation.pipeline import DEFAULT_IMAGE, PARAMETERS, build_pipeline

CHECKED_IN = Path(__file__).parents[2] / "pipelines" / "distillation.yaml"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("compiled") / "distillation.yaml"
    compiler.Compiler().compile(build_pipeline(), str(path))
    return yaml.safe_load(path.read_text())


def test_checked_in_yaml_is_current(compiled):
    assert CHECKED_IN.exists(), "run `make compile` and commit pipelines/distillation.yaml"
    assert yaml.safe_load(CHECKED_IN.read_text()) == compiled, (
        "pipelines/distillation.yaml is stale: run `make compile` and commit it"
    )


def test_every_parameter_has_a_default_and_a_description(compiled):
    params = compiled["root"]["inputDefinitions"]["parameters"]
    assert set(params) == set(PARAMETERS)
    for name, spec in params.items():
        assert "defaultValue" in spec, f"{name} has no default"
        assert spec.get("description"), f"{name} has no description for the UI"


def test_teachers_fan_out_in_parallel_and_are_collected_for_distill(compiled):
    dag = compiled["root"]["dag"]["tasks"]
    loop = next(t for t in dag.values() if "parameterIterator" in t)
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("teachers")
    distill_inputs = dag["distill"]["inputs"]["artifacts"]["teachers"]
    assert distill_inputs["taskOutputArtifact"]["producerTask"].startswith("for-loop")


def test_registration_runs_only_when_the_gates_passed(compiled):
    branches = compiled["components"]["comp-condition-branches-2"]["dag"]["tasks"]
    by_name = {task["taskInfo"]["name"]: task for task in branches.values()}
    passed, failed = by_name["gates-passed"], by_name["gates-failed"]
    assert passed["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--evaluate-passed'] == true"
    )
    assert failed["triggerPolicy"]["condition"].startswith("!(")
    inner = compiled["components"][passed["componentRef"]["name"]]["dag"]["tasks"]
    assert set(inner) == {"register"}
    inner = compiled["components"][failed["componentRef"]["name"]]["dag"]["tasks"]
    assert set(inner) == {"skip-registration"}


def test_component_image_is_a_compile_time_choice(tmp_path):
    path = tmp_path / "p.yaml"
    compiler.Compiler().compile(build_pipeline("registry.example/kdflow:9.9"), str(path))
    executors = yaml.safe_load(path.read_text())["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values()}
    assert images == {"registry.example/kdflow:9.9"}
    assert DEFAULT_IMAGE not in path.read_text()


def test_components_do_not_install_packages_at_run_time(compiled):
    for executor in compiled["deploymentSpec"]["executors"].values():
        command = " ".join(executor["container"]["command"])
        assert "pip install" not in command
