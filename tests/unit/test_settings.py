"""The settings dataclasses (`kdflow.config.settings`): defaults, the checks that name the CLI
option, and a --help text for every setting."""

from dataclasses import fields

import pytest

from kdflow.config import (
    SECTIONS,
    DataConfig,
    DistillConfig,
    GateConfig,
    RegistryConfig,
    RunConfig,
    TeacherConfig,
    field_docs,
    option_name,
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
        (DistillConfig, {"grad_accum": 0}, "--grad-accum: must be at least 1, got 0"),
        (DistillConfig, {"parallel": "zero3"}, "--parallel: must be `ddp` or `fsdp`, got 'zero3'"),
        (DistillConfig, {"parallel": "fsdp", "workers": 0},
         "--parallel: `fsdp` shards the student across Ray Train workers"),
        (DistillConfig, {"use_gpu": "yes"}, "--use-gpu: must be `auto`, `on` or `off`, got 'yes'"),
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
        (
            TeacherConfig,
            {"teachers": ["auto", "mlp:hidden=8"]},
            "--teachers: `auto` stands for the whole ensemble; give it alone",
        ),
        (TeacherConfig, {"teacher_epochs": -1}, "--teacher-epochs: must be 0 (use fetched"),
        (DataConfig, {"max_length": -1}, "--max-length: must be at least 1 token"),
        (DataConfig, {"task": "regression"}, "--task: unknown task 'regression'"),
        (DataConfig, {"task": "causal-lm", "data": "c.parquet"},
         "--text-column: --task causal-lm needs --text-column (plain text) or --prompt-column"),
        (DataConfig, {"task": "causal-lm", "data": "c.parquet", "prompt_column": "p"},
         "--prompt-column: needs --completion-column"),
        (DataConfig, {"task": "causal-lm", "data": "c.parquet", "completion_column": "c"},
         "--completion-column: needs --prompt-column"),
        (DataConfig, {"task": "causal-lm", "data": "c.parquet", "text_column": "t",
                      "prompt_column": "p", "completion_column": "c"},
         "--text-column: --task causal-lm needs --text-column (plain text) or"),
        (DataConfig, {"task": "causal-lm"}, "--data: --task causal-lm needs a text corpus"),
        (DataConfig, {"prompt_column": "p"}, "--prompt-column: is for --task causal-lm"),
        (DistillConfig, {"kd_loss": "kl"}, "--kd-loss: unknown loss 'kl'"),
        (DistillConfig, {"jsd_beta": 1.5}, "--jsd-beta: must be in [0, 1]"),
        (GateConfig, {"max_perplexity_ratio": 0.5}, "--max-perplexity-ratio: must be >= 1"),
        (DataConfig, {"text_pair_column": "b"}, "--text-pair-column: needs --text-column"),
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


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_calibration_ceiling_outside_zero_one_is_refused(value):
    with pytest.raises(ConfigError, match=rf"^--max-ece: must be in \[0, 1\], got {value}$"):
        GateConfig(max_ece=value)


CONFIG_FIELDS = [(cls, f.name) for cls in SECTIONS.values() for f in fields(cls)] + [
    (RunConfig, f.name) for f in fields(RunConfig) if f.name not in SECTIONS
]


@pytest.mark.parametrize(
    ("cls", "name"), CONFIG_FIELDS, ids=[f"{c.__name__}.{n}" for c, n in CONFIG_FIELDS]
)
def test_every_setting_has_help_text(cls, name):
    assert field_docs(cls).get(name, "").strip()
