"""settings: the pipeline's parameters in, each settings group out as its dataclass's JSON."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format

from components import settings
from components.parameters import (
    GROUPS,
    defaults,
    from_pipeline,
    hints,
    pipeline_values,
    to_pipeline,
)
from kdflow.config import DataConfig, DistillConfig, RegistryConfig, TeacherConfig
from kdflow.errors import ConfigError

component = settings.make("kdflow:test")


def test_each_group_comes_out_as_its_dataclass_with_the_values_given():
    out = dict(zip(GROUPS, component.python_func(**{
        **defaults(), "student_epochs": 3, "input_shape": "1,8,8", "teachers": ["mlp", "cnn"],
        "storage_path": "", "tracking_uri": "sqlite:///m.db"}), strict=True))
    assert DataConfig(**json.loads(out["data_config"])) == DataConfig(input_shape=[1, 8, 8])
    assert DistillConfig(**json.loads(out["distill_config"])) == DistillConfig(student_epochs=3)
    assert TeacherConfig(**json.loads(out["teacher_config"])).teachers == ["mlp", "cnn"]
    registry = RegistryConfig(**json.loads(out["registry_config"]))
    assert registry == RegistryConfig(tracking_uri="sqlite:///m.db")
    # Integers stay integers on the way (a dict parameter would make them floats).
    assert json.loads(out["distill_config"])["student_epochs"] == 3


def test_a_bad_setting_stops_the_run_naming_the_option():
    with pytest.raises(ConfigError, match="--temperature: must be > 0"):
        component.python_func(**{**defaults(), "temperature": 0.0})
    with pytest.raises(ConfigError, match="--input-shape"):
        component.python_func(**{**defaults(), "input_shape": "1,0,8"})


def test_the_step_takes_every_settings_field_as_a_typed_input():
    spec = json_format.MessageToDict(component.pipeline_spec)["components"]["comp-settings"]
    inputs = {name: p["parameterType"]
              for name, p in spec["inputDefinitions"]["parameters"].items()}
    assert set(inputs) == {name for cls in GROUPS.values() for name in hints(cls)}
    assert [inputs[name] for name in ("teachers", "input_shape", "student_epochs", "alpha")] == [
        "LIST", "STRING", "NUMBER_INTEGER", "NUMBER_DOUBLE"]
    assert set(spec["outputDefinitions"]["parameters"]) == set(GROUPS)


@pytest.mark.parametrize("cfg", [
    DataConfig(test_data="test.csv", contract="c.yaml", input_shape=[1, 8, 8]),
    DataConfig(),
    DistillConfig(teacher_weights=[1.0, 2.5], ensemble="weighted_probs",
                  storage_path="s3://b/p"),
    RegistryConfig(tracking_uri="http://mlflow:5000"),
])
def test_a_value_survives_the_trip_through_a_pipeline_parameter(cfg):
    types = hints(type(cfg))
    back = {name: from_pipeline(value, types[name]) for name, value in pipeline_values(cfg).items()}
    assert type(cfg)(**back) == cfg


def test_none_and_shapes_are_written_as_the_kubeflow_ui_takes_them():
    types = hints(DataConfig)
    assert to_pipeline(None, types["test_data"]) == ""
    assert to_pipeline([1, 28, 28], types["input_shape"]) == "1,28,28"
    assert pipeline_values(TeacherConfig())["teachers"] == ["auto"]
