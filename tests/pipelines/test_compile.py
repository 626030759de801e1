"""The compiled pipeline: checked in, current, and complete for the Kubeflow UI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from kfp import compiler

from components.parameters import pipeline_values
from kdflow.config import SECTIONS, RunConfig, field_docs
from pipelines.distillation.pipeline import DEFAULT_IMAGE, PARAMETERS, build_pipeline

CHECKED_IN = Path(__file__).parents[2] / "pipelines" / "distillation.yaml"


def load(path: Path) -> dict:
    """The pipeline spec and, when present, its kfp-kubernetes platform spec, as one dict."""
    merged: dict = {}
    for document in yaml.safe_load_all(path.read_text()):
        merged.update(document)
    return merged


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("compiled") / "distillation.yaml"
    compiler.Compiler().compile(build_pipeline(), str(path))
    return load(path)


def test_checked_in_yaml_is_current(compiled):
    assert CHECKED_IN.exists(), "run `make compile` and commit pipelines/distillation.yaml"
    assert load(CHECKED_IN) == compiled, (
        "pipelines/distillation.yaml is stale: run `make compile` and commit it"
    )


def test_every_settings_field_is_a_parameter_with_its_default_and_docstring(compiled):
    params = compiled["root"]["inputDefinitions"]["parameters"]
    fields = {f.name: cls for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    assert set(params) == set(fields) | {"seed"} == set(PARAMETERS)
    defaults = {name: value for cls in SECTIONS.values()
                for name, value in pipeline_values(cls()).items()}  # each group's own
    assert params["seed"]["defaultValue"] == RunConfig.seed
    for name, spec in params.items():
        assert spec.get("description"), f"{name} has no description for the UI"
        if name in fields:
            assert spec["defaultValue"] == defaults[name], name
        if name not in ("tracking_uri", "seed"):  # the cluster's default differs from the CLI's
            assert spec["description"] == field_docs(fields[name])[name], name
    # None and lists as the Kubeflow UI takes them.
    assert (params["test_data"]["defaultValue"], params["input_shape"]["defaultValue"]) == ("", "")
    assert params["teachers"]["defaultValue"] == ["auto"]
    assert params["teachers"]["parameterType"] == "LIST"


def test_each_step_takes_its_settings_group_from_the_settings_step(compiled):
    tasks = compiled["root"]["dag"]["tasks"]
    settings_inputs = tasks["settings"]["inputs"]["parameters"]
    assert {name: p["componentInputParameter"] for name, p in settings_inputs.items()} == {
        name: name for name in PARAMETERS if name != "seed"}
    for task, group in (("validate-data", "data_config"), ("validate-data", "teacher_config"),
                        ("distill", "distill_config"), ("evaluate", "gate_config"),
                        ("evaluate", "registry_config")):
        source = tasks[task]["inputs"]["parameters"][group]["taskOutputParameter"]
        assert source == {"producerTask": "settings", "outputParameterKey": group}, task


def test_teachers_fan_out_over_the_plan_and_are_collected_for_distill(compiled):
    dag = compiled["root"]["dag"]["tasks"]
    loop = next(t for t in dag.values() if "parameterIterator" in t)
    assert loop["parameterIterator"]["items"]["inputParameter"] == (
        "pipelinechannel--validate-data-Output")
    body = compiled["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    inputs = body["train-teacher"]["inputs"]["parameters"]
    for field in ("spec", "seed", "index", "teacher_config"):
        assert inputs[field]["parameterExpressionSelector"] == (
            f'parseJson(string_value)["{field}"]')
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
    executors = load(path)["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values()}
    assert images == {"registry.example/kdflow:9.9"}
    assert DEFAULT_IMAGE not in path.read_text()


def test_components_do_not_install_packages_at_run_time(compiled):
    for executor in compiled["deploymentSpec"]["executors"].values():
        command = " ".join(executor["container"]["command"])
        assert "pip install" not in command


def _platform(compiled: dict) -> dict:
    return compiled["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_training_steps_get_gpus_on_gpu_nodes_with_shared_memory(compiled):
    resources = {name: e["container"].get("resources", {})
                 for name, e in compiled["deploymentSpec"]["executors"].items()}
    platform = _platform(compiled)
    for step in ("exec-train-teacher", "exec-distill"):
        assert resources[step]["accelerator"]["resourceCount"] == "1"
        assert resources[step]["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert platform[step]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        assert platform[step]["tolerations"][0]["key"] == "nvidia.com/gpu"
        shm = platform[step]["emptyDirMounts"][0]
        assert (shm["mountPath"], shm["medium"]) == ("/dev/shm", "Memory")
    assert "accelerator" not in resources["exec-evaluate"]


def test_every_step_has_limits_timeout_non_root_and_secrets_by_reference(compiled):
    platform = _platform(compiled)
    for name, executor in compiled["deploymentSpec"]["executors"].items():
        res = executor["container"]["resources"]
        assert {"cpuLimit", "memoryLimit", "cpuRequest", "memoryRequest"} <= set(res), name
        assert int(platform[name]["activeDeadlineSeconds"]) > 0, name
        assert platform[name]["securityContext"]["runAsNonRoot"] is True, name
        if name in ("exec-settings", "exec-skip-registration"):  # no data, MLflow nor S3
            assert "secretAsEnv" not in platform[name] and "configMapAsEnv" not in platform[name]
            continue
        secrets = {s["secretName"] for s in platform[name]["secretAsEnv"]}
        # The distill step also gets the Ray cluster's token (RAY_AUTH_TOKEN) for --ray-address.
        expected = {"kdflow-s3", "kdflow-mlflow"} | ({"kdflow-ray"} if "distill" in name else set())
        assert secrets == expected, name
        # Not optional: a misnamed Secret or ConfigMap fails the pod at start, naming it.
        assert not any(s["optional"] for s in platform[name]["secretAsEnv"]), name
        (config,) = platform[name]["configMapAsEnv"]
        assert config["configMapName"] == "kdflow-config" and config["optional"] is False
        assert {k["envVar"] for k in config["keyToEnv"]} == {"MLFLOW_TRACKING_URI",
                                                             "KDFLOW_STORAGE_PATH"}, name
        assert "env" not in executor["container"] or not any(
            "SECRET" in e["name"] or "PASSWORD" in e["name"]
            for e in executor["container"]["env"]
        ), name


def test_steps_that_may_hit_a_flaky_node_or_server_retry_with_backoff(compiled):
    tasks = compiled["root"]["dag"]["tasks"]
    assert tasks["distill"]["retryPolicy"]["maxRetryCount"] == 2
    assert tasks["distill"]["retryPolicy"]["backoffFactor"] == 2.0


def test_cpu_only_compile_has_no_gpu_settings(tmp_path):
    from pipelines.distillation.cluster import ClusterSettings

    path = tmp_path / "cpu.yaml"
    compiler.Compiler().compile(build_pipeline(cluster=ClusterSettings(gpus=0)), str(path))
    text = path.read_text()
    assert "nvidia.com/gpu" not in text and "accelerator" not in text
