"""Checks a run's settings against its data before any step starts, so a mistake costs
seconds and reads as one line naming the option, not a failed pipeline. Classification
runs (numeric columns, text, images) and causal-lm runs (`check_corpus_run`) each have
their own checks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kdflow.config import BUILTIN_PREFIX, RunConfig
from kdflow.errors import ConfigError, DataError
from kdflow.models.zoo import (
    AUTO,
    MLFLOW_URI_PREFIX,
    build_classifier,
    parse_spec,
    resolve_teachers,
)

REMOTE_SCHEMES = ("s3://", "gs://", "http://", "https://")


def table_columns(uri: str, option: str) -> list[str] | None:
    """Column names of a local Parquet, CSV or JSON Lines file (None for remote URIs,
    checked later); what `kdflow.data.tables` refuses in its header or first block (an
    encoding, a name twice, another format) is a ConfigError naming `option`."""
    if uri.startswith(REMOTE_SCHEMES):
        return None
    path = Path(uri)
    if not path.exists():
        raise ConfigError(f"{option}: {uri}: no such file", option=option)
    if path.is_dir():
        raise ConfigError(
            f"{option}: {uri} is a directory; give a Parquet or CSV file", option=option
        )
    from kdflow.data.tables import table_header

    try:
        return table_header(uri)
    except DataError as exc:
        raise ConfigError(f"{option}: {exc}", option=option) from exc


def _not_a_column(option: str, column: str, uri: str, columns: list[str]) -> ConfigError:
    """The error for a column `option` names that `uri` lacks, with the columns it has and
    what the header suggests went wrong."""
    shown = ", ".join(columns[:12]) + (" ..." if len(columns) > 12 else "")
    return ConfigError(
        f"{option}: {column!r} is not a column of {uri} (columns: {shown})"
        + _column_hint(column, columns),
        option=option,
    )


def _column_hint(column: str, columns: list[str]) -> str:
    """A near match (spaces, case), another delimiter, or a file without a header row."""
    import difflib

    from kdflow.data.csv_files import is_number

    near = [c for c in columns if c.strip().casefold() == column.strip().casefold()]
    near = near or difflib.get_close_matches(column, columns, n=1, cutoff=0.8)
    if near:
        return f"; did you mean {near[0]!r}?"
    if len(columns) == 1:
        for delimiter, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
            if delimiter in columns[0]:
                return (f"; the header is one column holding {name}: kdflow reads "
                        "comma-separated CSV, so save it with commas")
    if columns and all(is_number(c) for c in columns):
        return ("; every column name is a number: does the file lack a header row? The first "
                "row names the columns")
    return ""


def check_run(cfg: RunConfig) -> None:
    """Raise ConfigError for anything that would make the pipeline fail on its first steps."""
    from kdflow.data.image_facts import is_image_data
    from kdflow.data.prepared import BUILTIN_SHAPES, default_input_shape

    data = cfg.data
    if data.contract and not Path(data.contract).is_file():
        raise ConfigError(f"--contract: {data.contract}: no such file", option="--contract")
    check_workers(cfg)
    check_use_gpu(cfg)
    if data.task == "causal-lm":
        check_corpus_run(cfg)
        return
    images = is_image_data(data.data, data.image_column)  # an s3:// listing: once
    for option, names in (("--augment", cfg.distill.augment),
                          ("--teacher-augment", cfg.teachers.teacher_augment)):
        if names and not images:
            raise ConfigError(
                f"{option}: image augmentations apply to image data (a folder of images, or "
                "--image-column); for numeric columns see --augment-noise",
                option=option,
            )
    if images:
        _check_images(cfg)
        return
    if data.image_size or data.channels:
        option = "--image-size" if data.image_size else "--channels"
        raise ConfigError(
            f"{option}: applies to image data (a folder of images, or --image-column); "
            f"{data.data} is a table of columns",
            option=option,
        )
    columns: list[str] | None = None
    features: list[str] | None = None
    if data.data.startswith(BUILTIN_PREFIX):
        name = data.data.removeprefix(BUILTIN_PREFIX)
        if name not in BUILTIN_SHAPES:
            raise ConfigError(
                f"--data: unknown built-in dataset {name!r}; known: "
                + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_SHAPES),
                option="--data",
            )
        n_features = math.prod(BUILTIN_SHAPES[name])
    else:
        columns = table_columns(data.data, "--data")
        n_features = None
        if columns is not None:
            if data.label_column not in columns:
                raise _not_a_column("--label-column", data.label_column, data.data, columns)
            features = _contract_features(cfg, columns)
            n_features = len(features) if features else len(columns) - 1
    test_columns = None
    if data.test_data:
        test_columns = table_columns(data.test_data, "--test-data")
        if test_columns is not None and data.label_column not in test_columns:
            raise ConfigError(
                f"--test-data: {data.test_data} has no label column {data.label_column!r}",
                option="--test-data",
            )
        if test_columns is not None and columns is not None and not data.text_column:
            _check_test_features(cfg, features or columns, test_columns)
    if not data.data.startswith(BUILTIN_PREFIX) and columns is not None:
        check_labels(cfg, local_test=test_columns is not None)
    if data.text_column:
        _check_text(cfg, columns)
        return
    shape = data.input_shape or default_input_shape(data.data)
    if shape is not None and n_features is not None and math.prod(shape) != n_features:
        raise ConfigError(
            f"--input-shape: {','.join(map(str, shape))} holds {math.prod(shape)} values but "
            f"{data.data} has {n_features} feature columns",
            option="--input-shape",
        )
    sample = shape or ([n_features] if n_features else None)
    teachers = (
        resolve_teachers(cfg.teachers.teachers, sample)
        if sample
        else [t for t in cfg.teachers.teachers if t != AUTO]
    )
    specs = [("--student", cfg.distill.student)] + [
        ("--teachers", t) for t in teachers if not t.startswith(MLFLOW_URI_PREFIX)
    ]
    for option, text in specs:
        if _not_zoo(text, option):
            raise ConfigError(
                f"{option}: {text} classifies text; give --text-column for text data, or a "
                "zoo model (mlp:hidden=64) or a python: factory for numeric columns",
                option=option,
            )
        if text.startswith("python:"):
            if n_features is not None:
                # Call the factory once on the real shapes: a factory that returns no
                # module, or a module that fails its forward pass, stops here rather than
                # in the distill step after the teachers have trained.
                from kdflow.models.python_source import construct, parse

                construct(parse(text, option), shape or [n_features], 2, n_features, option)
            continue
        spec = parse_spec(text, option)
        if n_features is not None:
            # Build once on the real shapes: catches e.g. a cnn without a C,H,W input shape.
            try:
                build_classifier(spec, shape or [n_features], 2, n_features)
            except ConfigError as exc:
                raise ConfigError(f"{option}: {text}: {exc}", option=option) from exc
    _check_teacher_epochs(cfg, teachers)
    _check_methods(cfg, teachers, sample, n_features)


def _check_test_features(cfg: RunConfig, features: list[str], test_columns: list[str]) -> None:
    """Every feature of --data (or of --contract) is a column of --test-data."""
    data = cfg.data
    lacking = [c for c in features if c != data.label_column and c not in test_columns]
    if lacking:
        shown = ", ".join(repr(c) for c in lacking[:10]) + (" ..." if len(lacking) > 10 else "")
        raise ConfigError(
            f"--test-data: {data.test_data} lacks feature column(s) {shown} of {data.data}; "
            "the models read every feature of --data (or of --contract)"
            + _column_hint(lacking[0], test_columns),
            option="--test-data",
        )


def _local_ray(cfg: RunConfig) -> bool:
    """Whether the run's Ray starts on this machine: no --ray-address, no $RAY_ADDRESS."""
    import os

    return not (cfg.distill.ray_address or os.environ.get("RAY_ADDRESS"))


def check_workers(cfg: RunConfig) -> None:
    """Ray Train workers an in-process Ray can place: one CPU each, or one GPU each on a
    machine with GPUs. More would wait for resources that never come. A cluster
    (--ray-address, or $RAY_ADDRESS) may autoscale, so it is not checked."""
    workers = cfg.distill.workers
    if workers < 2 or not _local_ray(cfg):
        return
    import torch

    from kdflow.distill.runtime import cpu_budget

    gpus = torch.cuda.device_count()
    have, unit = (gpus, "GPU") if gpus else (cpu_budget(), "CPU")
    if workers > have:
        raise ConfigError(
            f"--workers: {workers} Ray Train workers need {workers} {unit}s; this machine has "
            f"{have} (use --workers {have} or fewer, or --ray-address for a cluster)",
            option="--workers",
        )


def check_use_gpu(cfg: RunConfig) -> None:
    """`--use-gpu on` where Ray runs on this machine, which has no GPU: the workers would
    wait forever for one. A cluster may start GPU workers, so it is not checked."""
    if cfg.distill.use_gpu != "on" or not _local_ray(cfg):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            "--use-gpu on: this machine has no GPU for the local Ray (use auto or off, or "
            "--ray-address for a cluster with GPU workers)",
            option="--use-gpu",
        )


def _contract_features(cfg: RunConfig, columns: list[str]) -> list[str] | None:
    """The features a --contract lists (the columns that train), each a column of --data;
    None without a contract or when it lists none (every column but the label trains)."""
    if not cfg.data.contract:
        return None
    from kdflow.validation.contract import DataContract

    features = DataContract.from_yaml(cfg.data.contract).features
    if not features:
        return None
    for name in features:
        if name not in columns:
            raise _not_a_column("--contract", name, cfg.data.data, columns)
    return list(features)


def check_labels(cfg: RunConfig, local_test: bool) -> None:
    """The label column of a local --data (and --test-data) as the validate step splits and
    matches it: no class with a single row when --data is split into train and test, and
    test labels that match the training labels as classes (1, 1.0 and "1" are one class;
    "a" and 1 cannot be). One streamed pass over the label column of each file."""
    from kdflow.data.labels import (
        LabelTypeError,
        class_keys,
        single_row_classes,
        single_row_message,
    )
    data = cfg.data
    label = data.label_column
    counts = _label_counts(data.data, label)
    _check_classes(counts, label, data.data)
    if not data.test_data:
        fractional = any(isinstance(c, float) and not c.is_integer() for c in counts)
        singles = [] if fractional else single_row_classes(counts)  # fractional: validation's
        if singles:
            raise ConfigError("--label-column: " + single_row_message(singles, label, data.data),
                              option="--label-column")
        return
    if not local_test:
        return
    test_counts = _label_counts(data.test_data, label)
    try:
        class_keys({data.test_data: list(test_counts), data.data: list(counts)}, label)
    except LabelTypeError as exc:
        raise ConfigError(f"--test-data: {exc}", option="--test-data") from exc


def _check_classes(counts: dict[Any, int], label: str, uri: str) -> None:
    """Fewer than two classes (nothing to classify), or about as many classes as rows (a
    regression target or an ID given as the label)."""
    rows = sum(counts.values())
    if len(counts) < 2:
        found = f"a single class ({next(iter(counts))!r})" if counts else "no values at all"
        raise ConfigError(
            f"--label-column: {label!r} holds {found} in {uri}; classification (and "
            "distillation) needs at least 2 classes",
            option="--label-column",
        )
    if len(counts) > max(100, rows // 2):
        raise ConfigError(
            f"--label-column: {label!r} has {len(counts):,} distinct values in {rows:,} rows "
            f"of {uri}; kdflow classifies (every value is a class), and this looks like a "
            "regression target or an ID: give the column of classes, or bin the values",
            option="--label-column",
        )


def _label_counts(uri: str, label: str) -> dict[Any, int]:
    """Rows per label value of a local file; what stops the count names --label-column."""
    from kdflow.data.tables import column_counts

    try:
        return column_counts(uri, label)[1]
    except DataError as exc:
        raise ConfigError(f"--label-column: {exc}", option="--label-column") from exc


TEXT_PREFIXES = ("hf:", "hf-config:", "hf-from-teacher:")


def _not_zoo(spec: str, option: str) -> bool:
    """Check a spec's syntax with its source (a local hf: folder: that it classifies); True
    for a transformers (text) spec."""
    from kdflow.models.sources import source_for

    source_for(spec).check(spec, option)
    if spec.startswith("hf:"):
        from kdflow.models.hf_folders import check_classifier_folder

        check_classifier_folder(spec, option)
    return spec.startswith(TEXT_PREFIXES)


def _check_teacher_epochs(cfg: RunConfig, teachers: list[str]) -> None:
    if cfg.teachers.teacher_epochs:
        return
    fresh = [t for t in teachers if not t.startswith(("hf:", MLFLOW_URI_PREFIX))]
    if fresh:
        raise ConfigError(
            f"--teacher-epochs 0: teacher {fresh[0]} is built fresh and must train; give "
            "epochs, or trained teachers (hf:FOLDER, models:/NAME@ALIAS)",
            option="--teacher-epochs",
        )


def _check_text(cfg: RunConfig, columns: list[str] | None) -> None:
    """A text run: the text columns exist, and every model reads text (transformers)."""
    data = cfg.data
    if columns is not None:
        for option, column in (("--text-column", data.text_column),
                               ("--text-pair-column", data.text_pair_column)):
            if column and column not in columns:
                raise _not_a_column(option, column, data.data, columns)
    if data.input_shape:
        raise ConfigError(
            "--input-shape: applies to numeric columns, not to --text-column",
            option="--input-shape",
        )
    teachers = resolve_teachers(cfg.teachers.teachers, [data.tokens], "text")
    for t in teachers:
        if t.startswith("hf-from-teacher:"):
            raise ConfigError(
                f"--teachers: {t}: hf-from-teacher makes a student from the first teacher; "
                "give teachers as hf:, hf-config: or models:/",
                option="--teachers",
            )
        if not t.startswith(MLFLOW_URI_PREFIX) and not _not_zoo(t, "--teachers"):
            raise ConfigError(
                f"--teachers: {t} reads numeric columns; text needs a transformers model "
                "(hf-config:bert:..., hf:FOLDER)",
                option="--teachers",
            )
    student = cfg.distill.student
    if not _not_zoo(student, "--student"):
        raise ConfigError(
            f"--student: {student} reads numeric columns; text needs a transformers model, "
            "e.g. hf-from-teacher:num_hidden_layers=2 or hf-config:bert:...",
            option="--student",
        )
    if student.startswith("hf-from-teacher:") and not teachers[0].startswith(
        ("hf:", "hf-config:", MLFLOW_URI_PREFIX)
    ):
        raise ConfigError(
            f"--student: hf-from-teacher needs the first teacher to be a transformers model; "
            f"it is {teachers[0]}",
            option="--student",
        )
    _check_teacher_epochs(cfg, teachers)
    _check_methods(cfg, teachers, None, None)


def _check_images(cfg: RunConfig) -> None:
    """An image run: the folder or the table's image column exists, and the settings that
    apply to columns or text are not given. The files themselves are the validate step's."""
    data = cfg.data
    for option, uri in (("--data", data.data), ("--test-data", data.test_data)):
        if uri and not uri.startswith(REMOTE_SCHEMES) and not Path(uri).exists():
            raise ConfigError(f"{option}: {uri}: no such folder or file", option=option)
        if data.image_column and uri:
            columns = table_columns(uri, option)
            for flag, column in (("--image-column", data.image_column),
                                 ("--label-column", data.label_column)):
                if columns is not None and column not in columns:
                    raise _not_a_column(flag, column, uri, columns)
    for option, given, why in (
        ("--input-shape", data.input_shape, "the input shape follows from --image-size and "
         "--channels"),
        ("--augment-noise", cfg.distill.augment_noise, "augment images with --augment"),
        ("--text-column", data.text_column, "a folder of images has no text column"),
    ):
        if given:
            raise ConfigError(f"{option}: does not apply to image data ({why})", option=option)
    teachers = [t for t in cfg.teachers.teachers if t != AUTO]
    from kdflow.models.sources import source_for

    specs = [("--student", cfg.distill.student)] + [("--teachers", t) for t in teachers]
    for option, spec in specs:
        if not spec.startswith(MLFLOW_URI_PREFIX):
            source_for(spec).check(spec, option)
    _check_teacher_epochs(cfg, teachers)
    _check_methods(cfg, teachers, None, None)


def _check_methods(
    cfg: RunConfig, teachers: list[str], shape: list[int] | None, n_features: int | None
) -> None:
    """Distillation-method settings that depend on the teachers: weight count, hint teacher,
    and (for a zoo hint teacher, on the real shapes) the hint layers."""
    from kdflow.distill.hints import make_plan

    distill = cfg.distill
    if distill.teacher_weights and len(distill.teacher_weights) != len(teachers):
        raise ConfigError(
            f"--teacher-weights: {len(distill.teacher_weights)} weights for {len(teachers)} "
            "teachers; give one per teacher, in --teachers order",
            option="--teacher-weights",
        )
    if not (distill.feature_weight or distill.attention_weight):
        return
    if distill.hint_teacher >= len(teachers):
        raise ConfigError(
            f"--hint-teacher: {distill.hint_teacher} but there are {len(teachers)} teachers "
            "(0-based)",
            option="--hint-teacher",
        )
    teacher = teachers[distill.hint_teacher]
    if teacher.startswith(MLFLOW_URI_PREFIX) or shape is None or n_features is None:
        return  # checked by the distill step once the teacher is at hand
    make_plan(
        distill,
        build_classifier(parse_spec(teacher, "--teachers"), shape, 2, n_features),
        build_classifier(parse_spec(distill.student), shape, 2, n_features),
    )


# ----------------------------------------------------------------------- causal-lm runs
# The corpus's columns exist, every model is a transformers causal LM (or a registered
# model), fresh ones have the positions --max-length needs, and no classification-only
# option is given. The documents themselves are the validate step's.

LM_PREFIXES = ("hf:", "hf-config:", "hf-from-teacher:")


def corpus_columns(uri: str, option: str) -> list[str] | None:
    """Column names of a local Parquet, CSV or JSONL corpus (None for remote URIs)."""
    if uri.startswith(REMOTE_SCHEMES):
        return None
    path = Path(uri)
    if path.suffix.lower() in (".jsonl", ".ndjson") and path.is_file():
        import pandas as pd

        try:
            first = pd.read_json(path, lines=True, nrows=1)
        except ValueError as exc:
            raise ConfigError(f"{option}: {uri} cannot be read as JSON lines: {exc}",
                              option=option) from exc
        return [str(c) for c in first.columns]
    return table_columns(uri, option)


def check_corpus_run(cfg: RunConfig) -> None:
    """ConfigError for what would make a causal-lm run fail on its first steps."""
    from kdflow.distill.lm_checks import CLASSIFICATION_ONLY
    from kdflow.models.zoo import resolve_teachers

    data = cfg.data
    for option, uri in (("--data", data.data), ("--test-data", data.test_data)):
        if not uri:
            continue
        columns = corpus_columns(uri, option)
        if columns is None:
            continue
        flags = [("--text-column", data.text_column), ("--prompt-column", data.prompt_column),
                 ("--completion-column", data.completion_column)]
        for flag, column in flags:
            if column and column not in columns:
                raise _not_a_column(flag, column, uri, columns)
    for option, given in (("--input-shape", data.input_shape),
                          ("--augment-noise", cfg.distill.augment_noise),
                          ("--augment", cfg.distill.augment),
                          ("--teacher-augment", cfg.teachers.teacher_augment),
                          ("--image-size", data.image_size), ("--channels", data.channels)):
        if given:
            raise ConfigError(f"{option}: does not apply to --task causal-lm", option=option)
    for option, applies in CLASSIFICATION_ONLY.items():
        if applies(cfg.distill):
            raise ConfigError(f"{option}: not available for --task causal-lm", option=option)
    teachers = resolve_teachers(cfg.teachers.teachers, [data.tokens], "corpus")
    for spec in teachers:
        if spec.startswith("hf-from-teacher:"):
            raise ConfigError(
                f"--teachers: {spec}: hf-from-teacher makes a student from the first teacher; "
                "give teachers as hf:, hf-config: or models:/",
                option="--teachers",
            )
        _check_lm_spec(spec, "--teachers", data.tokens)
    _check_lm_spec(cfg.distill.student, "--student", data.tokens)
    _check_teacher_epochs(cfg, teachers)
    if cfg.distill.teacher_weights and len(cfg.distill.teacher_weights) != len(teachers):
        raise ConfigError(
            f"--teacher-weights: {len(cfg.distill.teacher_weights)} weights for "
            f"{len(teachers)} teachers; give one per teacher, in --teachers order",
            option="--teacher-weights",
        )


def _check_lm_spec(spec: str, option: str, max_length: int) -> None:
    """A spec's syntax; a causal-LM type and enough positions for a fresh model."""
    from kdflow.models.hf_config import _split_type, config_for, parse_overrides
    from kdflow.models.hf_lm import buildable, check_causal_type, check_positions
    from kdflow.models.sources import source_for
    from kdflow.models.zoo import MLFLOW_URI_PREFIX

    if spec.startswith(MLFLOW_URI_PREFIX):
        return
    if not spec.startswith(LM_PREFIXES):
        raise ConfigError(
            f"{option}: {spec} is not a language model; --task causal-lm takes transformers "
            "causal LMs: hf-config:gpt2:n_layer=2,n_embd=64,n_head=2, hf:FOLDER, or "
            "hf-from-teacher:n_layer=2 for the student",
            option=option,
        )
    source_for(spec).check(spec, option)
    location = Path(spec.removeprefix("hf:")).expanduser()
    if spec.startswith("hf:") and (location / "config.json").is_file():
        import json

        from kdflow.models.hf_lm import is_causal_folder

        config = json.loads((location / "config.json").read_text())
        if not is_causal_folder(config):
            kind = (config.get("architectures") or [config.get("model_type", "?")])[0]
            raise ConfigError(
                f"{option}: {spec} is not a causal language model ({kind}); --task causal-lm "
                "takes ...ForCausalLM / ...LMHeadModel folders",
                option=option,
            )
    if spec.startswith("hf-config:"):
        model_type, rest = _split_type(spec, option)
        check_causal_type(model_type, spec, option)
        overrides = parse_overrides(rest, spec, option)
        overrides.pop("vocab_size", None)
        config = config_for(model_type, overrides, spec, option)
        check_positions(config, max_length, spec, option)
        buildable(config, spec, option)
