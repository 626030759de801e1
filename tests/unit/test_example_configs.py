"""Every example config loads, and its first line is the command that runs it."""

from pathlib import Path

import pytest

from kdflow.config import load_config
from kdflow.models.zoo import parse_spec

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_there_are_example_configs():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_loads_and_names_its_command(path):
    cfg = load_config(path)
    for spec in [*cfg.teachers.teachers, cfg.distill.student]:
        parse_spec(spec)
    assert path.read_text().splitlines()[0].startswith(f"# kdflow run --config configs/{path.name}")


def test_digits_example_is_the_default_run():
    from kdflow.config import RunConfig

    cfg = load_config(Path(__file__).parents[2] / "configs" / "digits_3cnn_to_mlp12_kd_cpu.yaml")
    default = RunConfig()
    assert cfg.teachers == default.teachers
    assert cfg.distill == default.distill
    assert cfg.gates == default.gates
