"""Reading settings (`kdflow.config.loading`): YAML files and strings coerced to the fields'
types, errors that name the file and key, and the --help text read from the docstrings."""

from dataclasses import dataclass

import pytest

from kdflow.config import (
    GateConfig,
    RunConfig,
    build_config,
    field_docs,
    load_config,
    parse_input_shape,
)
from kdflow.errors import ConfigError


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


def test_help_text_joins_a_multi_line_docstring_onto_one_line():
    @dataclass
    class Example:
        size: int = 1
        """How many,
           at most."""
        undocumented: int = 2

    assert field_docs(Example) == {"size": "How many, at most."}
