"""Data contracts: what a dataset must look like before any teacher trains on it.

A contract is written by hand (YAML, checked on load), profiled from a trusted reference
dataset (`kdflow.validation.profile`), or the lenient `default_contract` the pipeline runs
when the user gives none. `kdflow.validation.gx_suite` turns it into a GX suite (for image
data, `kdflow.validation.image_checks` holds the per-image facts to it).

The dataclasses below are the only place a default lives; the string literal under each
field is its documentation (`field_docs` reads it for YAML comments and `--help`).
"""

from __future__ import annotations

import math
import textwrap
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from kdflow.config import field_docs
from kdflow.errors import ConfigError

FeatureDtype = Literal["float", "int"]
ConstantPolicy = Literal["fail", "warn"]


@dataclass
class FeatureSpec:
    """What one feature column must hold."""

    dtype: FeatureDtype = "float"
    """`float` accepts any numeric column (integers too); `int` only integer columns (an
    integer column with nulls reads as float)."""
    min: float | None = None
    """Smallest allowed value (inclusive); None: any finite value."""
    max: float | None = None
    """Largest allowed value (inclusive); None: any finite value."""
    max_null_fraction: float | None = None
    """Fraction of rows that may be null or NaN here; None: the contract's max_null_fraction."""

    def __post_init__(self) -> None:
        _check_choice("dtype", self.dtype, get_args(FeatureDtype))
        for name in ("min", "max"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value}", option=name)
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigError(f"min ({self.min}) is larger than max ({self.max})", option="min")
        if self.max_null_fraction is not None:
            _check_fraction("max_null_fraction", self.max_null_fraction)


@dataclass
class DataContract:
    """The data contract of a classification dataset: a label column and numeric features,
    a label column and one or two text columns (`text_columns`), or image files and their
    classes (`images`)."""

    label_column: str = "label"
    """Column holding the class of each row (integers or strings)."""
    classes: list[str | int] | None = None
    """Every class the label may take; None: whatever classes the training split has."""
    features: dict[str, FeatureSpec] | None = None
    """Feature columns and what they must hold; None: every non-label column, numeric."""
    max_null_fraction: float = 0.0
    """Fraction of rows that may be null or NaN in a feature (labels may never be null)."""
    min_rows_per_class: int = 1
    """Fewest training rows any class may have."""
    max_class_imbalance: float = 100.0
    """Largest allowed ratio of the biggest to the smallest class count in the training split."""
    max_duplicate_fraction: float = 0.25
    """Fraction of a split's rows that may repeat an earlier row (features and label alike;
    with text_columns, repeated texts are reported as a warning instead)."""
    max_drift_ks: float = 0.3
    """Largest allowed two-sample Kolmogorov-Smirnov statistic of a feature, test vs train."""
    drift_p_value: float = 0.01
    """Drift counts only when the KS test is also this significant (tiny splits are noisy)."""
    check_leakage: bool = True
    """Fail when a test row's features equal those of a training row."""
    on_constant_feature: ConstantPolicy = "warn"
    """`fail` or `warn` when a feature has a single value in a split (it carries no signal)."""
    input_shape: list[int] | None = None
    """Shape the flattened features are reshaped to (e.g. [1, 28, 28]); product = feature count."""
    text_columns: list[str] | None = None
    """Text columns each model tokenizes: one (--text-column), or two for sentence pairs
    (--text-pair-column); other non-label columns are then ignored. None: numeric features."""
    max_length: int = 128
    """Tokens each text (or pair) is truncated to (--max-length); rows with more whitespace
    words than this are counted, a lower bound of truncation (subword tokens ≥ words)."""
    max_truncated_fraction: float = 0.1
    """Warn when more than this fraction of a split's rows has more words than max_length."""
    images: bool = False
    """The data is image files: a folder per class, or a table of image paths or bytes
    (--image-column); each file must decode with Pillow. features, text_columns and
    input_shape do not apply (--image-size and --channels give the shape)."""
    max_unreadable_fraction: float = 0.0
    """Fraction of a split's image files that may fail to decode (corrupt, truncated, empty,
    not an image, missing): within it they are left out with a warning; above it, they fail."""

    def __post_init__(self) -> None:
        if not self.label_column:
            raise ConfigError("label_column must name a column", option="label_column")
        for name in (
            "max_null_fraction",
            "max_duplicate_fraction",
            "max_truncated_fraction",
            "max_unreadable_fraction",
        ):
            _check_fraction(name, getattr(self, name))
        if self.images:
            self._check_images()
        if self.max_length < 1:
            raise ConfigError(
                f"max_length must be at least 1 token, got {self.max_length}", option="max_length"
            )
        if self.text_columns is not None:
            self._check_text_columns(self.text_columns)
        if self.min_rows_per_class < 1:
            raise ConfigError(
                f"min_rows_per_class must be at least 1, got {self.min_rows_per_class}",
                option="min_rows_per_class",
            )
        if self.max_class_imbalance < 1:
            raise ConfigError(
                "max_class_imbalance is largest/smallest class count, so at least 1; "
                f"got {self.max_class_imbalance}",
                option="max_class_imbalance",
            )
        if not 0 < self.max_drift_ks <= 1:
            raise ConfigError(
                f"max_drift_ks must be in (0, 1], got {self.max_drift_ks}", option="max_drift_ks"
            )
        if not 0 < self.drift_p_value <= 1:
            raise ConfigError(
                f"drift_p_value must be in (0, 1], got {self.drift_p_value}",
                option="drift_p_value",
            )
        _check_choice("on_constant_feature", self.on_constant_feature, get_args(ConstantPolicy))
        if self.classes is not None:
            if len(set(self.classes)) != len(self.classes):
                raise ConfigError("classes lists a class twice", option="classes")
            if len(self.classes) < 2:
                raise ConfigError(
                    f"classes needs at least 2 classes to classify, got {self.classes}",
                    option="classes",
                )
        if self.features is not None:
            if not self.features:
                raise ConfigError(
                    "features is empty; leave it out to use every non-label column",
                    option="features",
                )
            if self.label_column in self.features:
                raise ConfigError(
                    f"the label column {self.label_column!r} is also listed as a feature",
                    option="features",
                )
        if self.input_shape is not None:
            if not self.input_shape or any(d < 1 for d in self.input_shape):
                raise ConfigError(
                    f"input_shape must be positive integers, got {self.input_shape}",
                    option="input_shape",
                )
            if self.features is not None:
                check_input_shape(self.input_shape, len(self.features))

    def _check_text_columns(self, columns: list[str]) -> None:
        problem = None
        if not 1 <= len(columns) <= 2:
            problem = f"text_columns names one column, or two for pairs; got {columns}"
        elif not all(columns) or len(set(columns)) != len(columns):
            problem = f"text_columns must name different, non-empty columns; got {columns}"
        elif self.label_column in columns:
            problem = f"the label column {self.label_column!r} is also listed as a text column"
        elif self.features is not None or self.input_shape is not None:
            problem = "text_columns cannot be combined with features or input_shape"
        if problem:
            raise ConfigError(problem, option="text_columns")

    def _check_images(self) -> None:
        """An image contract names no feature columns, text columns or input shape."""
        given = [
            name
            for name in ("features", "text_columns", "input_shape")
            if getattr(self, name) is not None
        ]
        if given:
            raise ConfigError(
                f"images cannot be combined with {' or '.join(given)}: the columns of image "
                "data are the files (--image-size and --channels give the shape)",
                option="images",
            )

    @property
    def is_text(self) -> bool:
        """Whether the dataset is text (text_columns set) rather than numeric features."""
        return self.text_columns is not None

    def feature_columns(self, columns: list[str]) -> list[str]:
        """The columns a model reads, given a split's columns (the contract's, when it lists)."""
        if self.text_columns is not None:
            return list(self.text_columns)
        if self.features is not None:
            return list(self.features)
        return [c for c in columns if c != self.label_column]

    def feature_spec(self, column: str) -> FeatureSpec:
        """The spec of a feature column (the default spec when features is None)."""
        if self.features is None:
            return FeatureSpec()
        return self.features[column]

    def null_fraction_allowed(self, column: str) -> float:
        spec = self.feature_spec(column)
        if spec.max_null_fraction is not None:
            return spec.max_null_fraction
        return self.max_null_fraction

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON-able); inverse of `from_dict`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "contract") -> DataContract:
        """Build a contract from plain data, naming the key and `source` in every error."""
        values = _typed_values(cls, data, source)
        features = values.get("features")
        if features is not None:
            values["features"] = {
                name: FeatureSpec(
                    **_typed_values(FeatureSpec, spec or {}, source, f"features.{name}.")
                )
                for name, spec in features.items()
            }
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}", option=exc.option) from exc

    @classmethod
    def from_yaml(cls, path: str | Path) -> DataContract:
        """Load a contract from YAML; unknown keys and wrong types raise ConfigError."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the contract: {exc.strerror or exc}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_dict({} if data is None else data, source=str(path))

    def to_yaml(self, path: str | Path, header: str | None = None) -> Path:
        """Write the contract as YAML, each key preceded by its documentation."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"# {line}" for line in (header or "kdflow data contract").splitlines()]
        docs = field_docs(DataContract)
        for name, value in self.to_dict().items():
            lines.append("")
            lines.extend(f"# {line}" for line in textwrap.wrap(docs[name], 90))
            if name == "features" and value is not None:
                # Only the keys that differ from FeatureSpec's defaults: 784 pixels stay readable.
                value = {col: _non_default(spec, FeatureSpec) for col, spec in value.items()}
            lines.append(yaml.safe_dump({name: value}, sort_keys=False, width=100).rstrip())
        path.write_text("\n".join(lines) + "\n")
        return path


def default_contract(
    label_column: str = "label",
    input_shape: list[int] | None = None,
    text_columns: Sequence[str | None] | None = None,
    max_length: int | None = None,
    images: bool = False,
) -> DataContract:
    """The lenient contract used when the user gives none.

    Columns present, the label present and never null, at least two classes, every
    feature numeric and finite, no test row leaked from train; class balance, duplicate and
    drift limits loose enough for ordinary datasets (sklearn's digits passes).

    With `text_columns` (the text column, then the pair's second column if any) the data is
    text: those columns must hold text, never null, not all blank; other columns are
    ignored, and `input_shape` too (tokens have no image shape). None entries are dropped,
    so `[cfg.text_column, cfg.text_pair_column]` works as it is. `max_length` (None: 128) is
    the token length the truncation statistics are measured against.

    With `images` the data is image files: every file must decode, and `input_shape` and
    `text_columns` are ignored (--image-size and --channels give an image's shape).
    """
    if images:
        return DataContract(label_column=label_column, images=True)
    if text_columns is None:
        return DataContract(label_column=label_column, input_shape=input_shape)
    contract = DataContract(label_column=label_column, text_columns=[c for c in text_columns if c])
    if max_length is not None:
        contract = replace(contract, max_length=max_length)
    return contract


def check_input_shape(input_shape: list[int], n_features: int) -> None:
    """Raise ConfigError unless the product of input_shape is the number of features."""
    if math.prod(input_shape) != n_features:
        raise ConfigError(
            f"input_shape {list(input_shape)} needs {math.prod(input_shape)} features, but "
            f"there are {n_features}; fix --input-shape or the feature columns",
            option="input_shape",
        )


def _typed_values(cls: type, data: Any, source: str, prefix: str = "") -> dict[str, Any]:
    """Check a mapping's keys and value types against the dataclass `cls`."""
    if not isinstance(data, dict):
        where = f"{prefix.rstrip('.')} " if prefix else ""
        raise ConfigError(
            f"{source}: {where}must be a mapping of keys to values, got {type(data).__name__}"
        )
    known = {f.name: f for f in fields(cls)}
    unknown = [str(key) for key in data if key not in known]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(prefix + k for k in unknown)}; allowed: {', '.join(known)}",
            option=prefix + unknown[0],
        )
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if not _matches(value, hints[key]):
            raise ConfigError(
                f"{source}: {prefix}{key} must be {_describe(hints[key])}, got {value!r}",
                option=prefix + key,
            )
    return dict(data)


def _matches(value: Any, hint: Any) -> bool:
    """Whether plain YAML data fits a type hint (ints pass for floats; bools never for numbers)."""
    origin = get_origin(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in get_args(hint))
    if origin is Literal:
        return value in get_args(hint)
    if hint is type(None):
        return value is None
    if hint is FeatureSpec:
        return value is None or isinstance(value, dict)
    if origin is list:
        (item,) = get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        key_hint, value_hint = get_args(hint)
        return isinstance(value, dict) and all(
            _matches(k, key_hint) and _matches(v, value_hint) for k, v in value.items()
        )
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    if origin is list:
        return f"a list of {_describe(get_args(hint)[0])}"
    if origin is dict:
        return "a mapping of column names to feature specs"
    if hint is type(None):
        return "null"
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _non_default(values: dict[str, Any], cls: type) -> dict[str, Any]:
    defaults = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
    return {k: v for k, v in values.items() if defaults.get(k, MISSING) != v}


def _check_fraction(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a fraction in [0, 1], got {value}", option=name)


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}", option=name
        )


def class_sort_key(value: str | int) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int) else (1, str(value))
