"""Reading settings: YAML files and CLI strings coerced to the dataclasses' field types, and
the docstring under each field (the `--help` text and the Kubeflow UI's descriptions)."""

from __future__ import annotations

import ast
import inspect
import textwrap
import typing
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from kdflow.config.checks import option_name
from kdflow.config.settings import SECTIONS, RunConfig
from kdflow.errors import ConfigError


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check a YAML value against a field's type annotation, converting the harmless cases."""
    hints = typing.get_args(annotation)
    if type(None) in hints:
        if value is None:
            return None
        annotation = next(h for h in hints if h is not type(None))
    origin = typing.get_origin(annotation)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, str):
            # `1,28,28` / `1x28x28` for shapes; one string is one item for lists of specs
            # (a spec has commas of its own: mlp:hidden=64,dropout=0.1).
            value = (
                [v for v in value.replace("x", ",").replace(" ", ",").split(",") if v]
                if item_type is int
                else [value]
            )
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_type, where) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _section_kwargs(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    # From the command line, a bad value is named as the option the user typed.
    return {k: _coerce(v, hints[k], option_name(k) if where.startswith("options")
                       else f"{where}.{k}") for k, v in values.items()}


def build_config(values: dict[str, Any], where: str = "config") -> RunConfig:
    """Build a RunConfig from nested settings (`{distill: {temperature: 2}}`), checking keys."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(values).__name__}")
    top = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(values) - top)
    if unknown:
        raise ConfigError(
            f"{where}: unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(top))}"
        )
    kwargs: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        section = values.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: section `{name}` must be a mapping")
        kwargs[name] = cls(**_section_kwargs(cls, section, f"{where}: {name}"))
    for name in ("seed", "output"):
        if name in values:
            kwargs[name] = _coerce(values[name], typing.get_type_hints(RunConfig)[name], name)
    return RunConfig(**kwargs)


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML config file; unknown keys and wrong types are ConfigErrors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: {path}: no such file", option="--config")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config: {path} is not valid YAML: {exc}", option="--config") from exc
    return build_config(values, where=str(path))


def parse_input_shape(text: str, option: str = "--input-shape") -> list[int]:
    """`1,28,28` or `1x28x28` -> [1, 28, 28] (also --image-size's `32,32`)."""
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    example = "32,32" if option == "--image-size" else "1,28,28"
    try:
        shape = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(
            f"{option}: expected integers like {example}, got {text!r}", option=option
        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise ConfigError(f"{option}: dimensions must be positive, got {text!r}", option=option)
    return shape
