"""Settings dataclasses: defaults, checks that name the CLI option, YAML loading, --help text."""

from dataclasses import dataclass, fields

import pytest

from kdflow.config import (
    SECTIONS,
    DataConfig,
    DistillConfig,
    GateConfig,
    RegistryConfig,
    RunConfig,
    TeacherConfig,
    build_config,
    field_docs,
    load_config,
    option_name,
    parse_input_shape,
)
from kdflow.errors import ConfigError


def test_every_default_constructs():
    cfg = RunConfig()
    assert cfg.distill == DistillConfig()
    assert cfg.to_dict()["distill"]["temperature"] == DistillConfig.temperature


def test_option_name_is_the_cli_spelling():
    assert option_name("teacher_epochs") == "--teacher-epochs"


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (DistillConfig, {"temperature": 0.0}, "--temperature: must be > 0, got 0.0"),
        (DistillConfig, {"temperature": -1.0}, "--temperature: must be > 0, got -1.0"),
        (DistillConfig, {"alpha": -0.1}, "--alpha: must be in [0, 1], got -0.1"),
        (DistillConfig, {"alpha": 1.5}, "--alpha: must be in [0, 1], got 1.5"),
        (DistillConfig, {"workers": -1}, "--workers: must be 0 (in-process) or more, got -1"),
        (
            DistillConfig,
            {"workers": 0, "ray_address": "http://127.0.0.1:8265"},
            "--workers: 0 trains in this process; a Ray cluster (--ray-address) needs 1 or more",
        ),
        (DistillConfig, {"student_epochs": 0}, "--student-epochs: must be at least 1"),
        (DistillConfig, {"student_lr": 0.0}, "--student-lr: must be > 0"),
        (DistillConfig, {"student_batch_size": 0}, "--student-batch-size: must be at least 1"),
        (DistillConfig, {"max_failures": -1}, "--max-failures: must be >= 0"),
        (TeacherConfig, {"teachers": []}, "--teachers: give at least one teacher"),
        (TeacherConfig, {"teacher_epochs": 0}, "--teacher-epochs: must be at least 1"),
        (TeacherConfig, {"teacher_lr": 0.0}, "--teacher-lr: must be > 0"),
        (TeacherConfig, {"batch_size": 0}, "--batch-size: must be at least 1"),
        (DataConfig, {"data": ""}, "--data: give a Parquet/CSV file or builtin:digits"),
        (DataConfig, {"label_column": ""}, "--label-column: must not be empty"),
        (DataConfig, {"test_fraction": 1.0}, "--test-fraction: must be in (0, 1)"),
        (DataConfig, {"val_fraction": 1.0}, "--val-fraction: must be in [0, 1)"),
        (DataConfig, {"validation": "ignore"}, "--validation: must be `fail` or `warn`"),
        (DataConfig, {"input_shape": [1, 0]}, "--input-shape: dimensions must be positive"),
        (GateConfig, {"min_retention": 2.0}, "--min-retention: must be in [0, 1.5]"),
        (GateConfig, {"min_compression": -1.0}, "--min-compression: must be >= 0"),
        (GateConfig, {"min_speedup": -1.0}, "--min-speedup: must be >= 0"),
        (GateConfig, {"max_regression": 1.5}, "--max-regression: must be in [0, 1]"),
        (RegistryConfig, {"model_name": " "}, "--model-name: must not be empty"),
        (RegistryConfig, {"promotion": "always"}, "--promotion: must be `auto` or `manual`"),
    ],
)
def test_invalid_setting_raises_config_error_starting_with_its_option(cls, kwargs, message):
    with pytest.raises(ConfigError) as err:
        cls(**kwargs)
    assert str(err.value).startswith(message)
    assert err.value.option == message.split(":")[0]


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_alpha_bounds_are_inclusive(alpha):
    assert DistillConfig(alpha=alpha).alpha == alpha


def test_build_config_fills_sections_and_keeps_other_defaults():
    cfg = build_config(
        {"distill": {"temperature": 2}, "data": {"input_shape": [1, 8, 8]}, "seed": "7"}
    )
    assert cfg.distill.temperature == 2.0
    assert isinstance(cfg.distill.temperature, float)
    assert cfg.data.input_shape == [1, 8, 8]
    assert cfg.seed == 7
    assert cfg.gates == GateConfig()


def test_build_config_reads_a_comma_separated_list_string():
    assert build_config({"data": {"input_shape": "1,8,8"}}).data.input_shape == [1, 8, 8]


def test_build_config_runs_the_section_checks():
    with pytest.raises(ConfigError, match="^--alpha: must be in"):
        build_config({"distill": {"alpha": 2}})


def test_unknown_section_is_refused_naming_it_and_the_file():
    with pytest.raises(ConfigError) as err:
        build_config({"distil": {"alpha": 0.5}}, where="run.yaml")
    assert str(err.value).startswith("run.yaml: unknown section(s) distil; known: ")


def test_unknown_key_is_refused_naming_it_and_the_file():
    with pytest.raises(ConfigError) as err:
        build_config({"distill": {"temprature": 2}}, where="run.yaml")
    assert str(err.value).startswith("run.yaml: distill: unknown setting(s) temprature; known: ")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"distill": {"temperature": "hot"}}, "run.yaml: distill.temperature: expected a number"),
        ({"teachers": {"teachers": 5}}, "run.yaml: teachers.teachers: expected a list, got 5"),
        ({"distill": {"workers": 1.5}}, "run.yaml: distill.workers: expected an integer"),
        ({"distill": {"workers": True}}, "run.yaml: distill.workers: expected an integer"),
        ({"distill": {"student": ["mlp"]}}, "run.yaml: distill.student: expected a string"),
    ],
)
def test_wrong_type_is_refused_naming_the_key_and_file(values, message):
    with pytest.raises(ConfigError) as err:
        build_config(values, where="run.yaml")
    assert str(err.value).startswith(message)


def test_section_that_is_not_a_mapping_is_refused():
    with pytest.raises(ConfigError, match="run.yaml: section `teachers` must be a mapping"):
        build_config({"teachers": 5}, where="run.yaml")


def test_config_that_is_not_a_mapping_is_refused():
    with pytest.raises(ConfigError, match="run.yaml: expected a mapping of sections, got list"):
        build_config([1, 2], where="run.yaml")


def test_single_teacher_spec_string_with_options_stays_one_teacher():
    cfg = build_config({"teachers": {"teachers": "mlp:hidden=64,dropout=0.1"}})
    assert cfg.teachers.teachers == ["mlp:hidden=64,dropout=0.1"]


def test_config_input_shape_accepts_the_x_form_like_the_cli():
    assert build_config({"data": {"input_shape": "1x8x8"}}).data.input_shape == [1, 8, 8]


def test_load_config_reads_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("distill:\n  temperature: 3\n  student: mlp:hidden=16\nseed: 5\n")
    cfg = load_config(path)
    assert (cfg.distill.temperature, cfg.distill.student, cfg.seed) == (3.0, "mlp:hidden=16", 5)


def test_load_config_of_an_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == RunConfig()


def test_load_config_names_the_file_in_key_errors(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("gates:\n  min_speed: 2\n")
    with pytest.raises(ConfigError, match=f"^{path}: gates: unknown setting"):
        load_config(path)


def test_load_config_of_a_missing_file_is_refused(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "nope.yaml")
    assert str(err.value) == f"--config: {tmp_path / 'nope.yaml'}: no such file"
    assert err.value.option == "--config"


def test_load_config_of_invalid_yaml_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("distill: [unclosed\n")
    with pytest.raises(ConfigError, match=f"^--config: {path} is not valid YAML"):
        load_config(path)


@pytest.mark.parametrize("text", ["1,28,28", "1x28x28", " 1, 28, 28 "])
def test_parse_input_shape_reads_commas_and_x(text):
    assert parse_input_shape(text) == [1, 28, 28]


@pytest.mark.parametrize("text", ["1,a,28", "1.5,2", "1X28X28"])
def test_parse_input_shape_refuses_non_integers(text):
    with pytest.raises(ConfigError, match="^--input-shape: expected integers like 1,28,28"):
        parse_input_shape(text)


@pytest.mark.parametrize("text", ["0,28,28", "1,-2", ""])
def test_parse_input_shape_refuses_non_positive_dimensions(text):
    with pytest.raises(ConfigError, match="^--input-shape: dimensions must be positive"):
        parse_input_shape(text)


CONFIG_FIELDS = [(cls, f.name) for cls in SECTIONS.values() for f in fields(cls)] + [
    (RunConfig, f.name) for f in fields(RunConfig) if f.name not in SECTIONS
]


@pytest.mark.parametrize(
    ("cls", "name"), CONFIG_FIELDS, ids=[f"{c.__name__}.{n}" for c, n in CONFIG_FIELDS]
)
def test_every_setting_has_help_text(cls, name):
    assert field_docs(cls).get(name, "").strip()


def test_help_text_joins_a_multi_line_docstring_onto_one_line():
    @dataclass
    class Example:
        size: int = 1
        """How many,
           at most."""
        undocumented: int = 2

    assert field_docs(Example) == {"size": "How many, at most."}
