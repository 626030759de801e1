"""Every example config in configs/ (torchtune's `tests/recipes/test_configs.py`): it builds a
RunConfig, its name says what it configures (data, teachers, student, method, where it runs),
and its first line is a `kdflow run` command the CLI accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from kdflow.config import BUILTIN_PREFIX, RunConfig, load_config
from kdflow.data.prepared import default_input_shape
from kdflow.models.zoo import parse_spec, resolve_teachers

ROOT = Path(__file__).parents[2]
CONFIG_DIR = ROOT / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
IDS = [p.name for p in CONFIGS]

# How a file name spells a zoo architecture.
FAMILIES = {"cnn": "cnn", "cnn1d": "cnn1d", "mlp": "mlp", "resnet": "resnet", "vit": "transformer"}
# Where (or how long) it runs: the last word of the name.
RUNS_ON = {"cpu", "gpu", "quick"}
# <data>_<N><teacher family>_to_<student>_<method...>_<where>.yaml
NAME = re.compile(r"^(?P<data>[a-z0-9]+)_(?P<count>\d*)(?P<teachers>[a-z0-9]+?)_to_"
                  r"(?P<rest>.+)\.yaml$")


def command_of(path: Path):
    """The first line's command, parsed by the CLI's own parser."""
    from pipelines.cli import build_parser

    first = path.read_text().splitlines()[0]
    assert first.startswith("# kdflow run "), first
    return build_parser().parse_args(shlex.split(first.removeprefix("# kdflow ")))


def run_config_of(path: Path, monkeypatch: pytest.MonkeyPatch) -> RunConfig:
    """The settings that command runs with: the file, then the options it gives."""
    from pipelines.cli import config_from_args

    monkeypatch.chdir(ROOT)  # the command is run from the repository's root
    return config_from_args(command_of(path))


def test_every_file_in_configs_is_an_example_config_under_test():
    names = sorted(p.name for p in CONFIG_DIR.iterdir())
    assert names == IDS, "configs/ holds files the tests below do not load (not *.yaml)"
    assert "digits_3cnn_to_mlp12_kd_cpu.yaml" in IDS


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_example_config_builds_a_run_config_with_valid_model_specs(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    for spec in [*cfg.teachers.teachers, cfg.distill.student]:
        parse_spec(spec)


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_example_config_name_says_what_it_configures(path, monkeypatch):
    match = NAME.match(path.name)
    assert match, f"{path.name}: name it <data>_<N><teacher>_to_<student>_<method>_<where>.yaml"
    cfg = run_config_of(path, monkeypatch)
    data = cfg.data.data
    if match["data"] in ("tabular", "images"):
        assert not data.startswith(BUILTIN_PREFIX), "this example takes the user's --data"
    else:
        assert data == f"{BUILTIN_PREFIX}{match['data']}"

    shape = cfg.data.input_shape or default_input_shape(data) or [1]
    teachers = [parse_spec(s) for s in resolve_teachers(cfg.teachers.teachers, shape)]
    assert len(teachers) == int(match["count"] or 1)
    assert {t.arch for t in teachers} == {FAMILIES[match["teachers"]]}

    *student_and_method, runs_on = match["rest"].split("_")
    assert runs_on in RUNS_ON
    student = parse_spec(cfg.distill.student)
    family, size = re.fullmatch(r"([a-z]+?(?:1d)?)(\d*)", student_and_method[0]).groups()
    assert FAMILIES[family] == student.arch
    if size:
        hidden = student.kwargs["hidden"]
        assert size == "x".join(str(h) for h in (hidden if isinstance(hidden, list) else [hidden]))

    method = set(student_and_method[1:]) - {"tiny"}  # vit_tiny: the student's size
    distill = cfg.distill
    assert ("fitnets" in method) == (distill.feature_weight > 0)
    assert ("attention" in method) == (distill.attention_weight > 0)
    if "kd" in method:
        assert (distill.feature_weight, distill.attention_weight) == (0.0, 0.0)
    if "online" in method:
        assert distill.teacher_mode == "online"
    # Function matching: augmented views, labelled by online teachers.
    assert ("funmatch" in method) == bool(distill.augment)
    assert method <= {"kd", "fitnets", "attention", "online", "funmatch"}, method


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_example_config_starts_with_a_command_the_cli_accepts(path, monkeypatch):
    ns = command_of(path)
    assert (ns.command, ns.config) == ("run", f"configs/{path.name}")
    from_command, from_file = run_config_of(path, monkeypatch), load_config(path)
    # Options on the command line override the file's data settings; nothing else changes.
    assert (from_command.teachers, from_command.distill, from_command.gates) == (
        from_file.teachers, from_file.distill, from_file.gates)


def test_digits_example_is_the_default_run_written_out():
    cfg = load_config(CONFIG_DIR / "digits_3cnn_to_mlp12_kd_cpu.yaml")
    default = RunConfig()
    assert cfg.teachers.teachers == resolve_teachers(default.teachers.teachers,
                                                     cfg.data.input_shape)
    assert {**vars(cfg.teachers), "teachers": None} == {**vars(default.teachers),
                                                        "teachers": None}
    # The default run reads the digits' shape from the data; the example writes it out.
    assert cfg.data.input_shape == default_input_shape(default.data.data)
    assert {**vars(cfg.data), "input_shape": None} == vars(default.data)
    assert (cfg.distill, cfg.gates, cfg.registry, cfg.seed) == (
        default.distill, default.gates, default.registry, default.seed)
