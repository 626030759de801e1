"""Not a component: how kdflow's settings travel as pipeline parameters, and back.

Each field of a settings dataclass (`GROUPS`) is one pipeline parameter, named as the field,
so the CLI, the compiled YAML and the Kubeflow UI agree; the `settings` step turns them back
into the dataclasses. Shared by the pipeline (defaults), the CLI (arguments) and that step.
"""

import dataclasses
import json
import typing
from typing import Any, List

from kdflow.config import (
    DataConfig,
    DistillConfig,
    GateConfig,
    RegistryConfig,
    TeacherConfig,
    parse_input_shape,
)

# The settings step's outputs, each the JSON of one dataclass.
GROUPS: dict[str, type] = {"data_config": DataConfig, "teacher_config": TeacherConfig,
                           "distill_config": DistillConfig, "gate_config": GateConfig,
                           "registry_config": RegistryConfig}


def hints(cls: type) -> dict[str, Any]:
    """Each field of a settings dataclass and its type."""
    types = typing.get_type_hints(cls)
    return {f.name: types[f.name] for f in dataclasses.fields(cls)}


def pipeline_type(hint: Any) -> Any:
    """A field's type as a pipeline parameter: optional fields are strings, "" for None
    (the Kubeflow UI has no null); the one optional list, input_shape, is written 1,28,28,
    and an optional number (a learning rate) as its decimal text."""
    if type(None) in typing.get_args(hint):
        return str
    if typing.get_origin(hint) is list:
        return List[typing.get_args(hint)[0]]  # noqa: UP006 (the spelling kfp documents)
    return hint


def to_pipeline(value: Any, hint: Any) -> Any:
    """A field's value as the pipeline takes it (see `pipeline_type`)."""
    if type(None) in typing.get_args(hint):
        return "" if value is None else ",".join(map(str, value if isinstance(value, list)
                                                      else [value]))
    return value


def from_pipeline(value: Any, hint: Any) -> Any:
    """The inverse of `to_pipeline` (a list's numbers come as protobuf floats: retyped)."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value == "" or str in args:
            return value or None
        return float(value) if float in args else parse_input_shape(value)
    item = args[0] if typing.get_origin(hint) is list else None
    return value if item is None else [item(v) if item in (int, float) else v for v in value]


def pipeline_values(cfg: Any) -> dict[str, Any]:
    """A settings dataclass's values as pipeline arguments."""
    return {name: to_pipeline(getattr(cfg, name), hint) for name, hint in hints(type(cfg)).items()}


def defaults() -> dict[str, Any]:
    """Every settings field's default, as a pipeline value."""
    return {name: value for cls in GROUPS.values()
            for name, value in pipeline_values(cls()).items()}


def group_configs(values: dict[str, Any]) -> tuple[str, ...]:
    """Every group (`GROUPS`, in order) built from the pipeline's values, as JSON; a bad value
    raises the dataclass's ConfigError."""
    built = [cls(**{name: from_pipeline(values[name], hint) for name, hint in hints(cls).items()})
             for cls in GROUPS.values()]
    return tuple(json.dumps(dataclasses.asdict(cfg), sort_keys=True) for cfg in built)
