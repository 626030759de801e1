"""A user's own nn.Module as a model source: `python:package.module:factory[:key=value,...]`.

The factory is imported (it must be importable in the image, or on PYTHONPATH) and called
as `factory(n_classes=..., input_shape=[...], **kwargs)`; it returns an nn.Module taking a
float tensor B × (input_shape) and returning B × n_classes logits. kdflow wraps it in
`FactoryModel`, which, like the zoo's `Classifier`, normalises the flat B × F features
(buffers `mean` and `std`, in the safetensors file) and reshapes them to the sample's shape,
so inputs, ONNX and timing work as for the zoo. Values parse as the zoo's do (`256` an int,
`0.1` a float, `256-256` a list), and `true`/`false` as booleans.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from kdflow.data.images import image_spec
from kdflow.data.prepared import DatasetMeta
from kdflow.errors import ConfigError, ModelFormatError
from kdflow.models.artifacts import SPEC, WEIGHTS, read_spec, save_model, sha256_file
from kdflow.models.sources import PrepareContext
from kdflow.models.zoo import Normalised, penultimate_layer

PREFIX = "python:"
RESERVED = {"n_classes", "input_shape", "arch", "factory"}
EXAMPLE = "python:mypkg.models:make_net:width=64"


@dataclass(frozen=True)
class FactorySpec:
    """A parsed `python:` spec: the factory's `module:name` and its keyword arguments."""

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    arch = "python"

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "factory": self.factory, **self.kwargs}

    def __str__(self) -> str:
        parts = [f"{k}={_text(v)}" for k, v in self.kwargs.items()]
        return PREFIX + self.factory + (":" + ",".join(parts) if parts else "")


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "-".join(_text(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _value(text: str) -> Any:
    """`8` an int, `1e-3` a float, `true` a bool, `256-256` a list, anything else a str."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if "-" in text.strip("-"):
        return [_value(p) for p in text.split("-")]
    return text.lower() == "true" if text.lower() in ("true", "false") else text


def _refuse(option: str, message: str) -> ConfigError:
    return ConfigError(f"{option}: {message}", option=option)


def _brief(exc: BaseException) -> str:
    """An exception as one short line: `TypeError: bad thing`."""
    text = (str(exc).strip().splitlines() or [""])[0][:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def parse(spec: str, option: str = "--student") -> FactorySpec:
    """`python:pkg.module:factory:k=v,...` -> its FactorySpec; ConfigError naming `option`."""
    module, _, rest = spec.strip().removeprefix(PREFIX).partition(":")
    name, _, args = rest.partition(":")
    module, name = module.strip(), name.strip()
    if not module or not name or not all(p.isidentifier() for p in module.split(".")):
        raise _refuse(option, f"{spec!r} names no factory; write python:package.module:"
                      f"factory[:key=value,...] (e.g. {EXAMPLE})")
    kwargs: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in args.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise _refuse(option, f"cannot parse {part!r} in {spec!r}; write key=value, "
                          f"lists with dashes (e.g. {EXAMPLE},hidden=256-256)")
        if key in RESERVED:
            raise _refuse(option, f"{spec!r} sets {key}; kdflow passes n_classes and "
                          f"input_shape itself ({', '.join(sorted(RESERVED))} are taken)")
        kwargs[key] = _value(value.strip())
    return FactorySpec(f"{module}:{name}", kwargs)


def import_factory(factory: str, option: str) -> Any:
    """The callable `module:name`; ConfigError naming `option` when it is not there."""
    module_name, _, name = factory.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _refuse(option, f"cannot import {module_name} ({_brief(exc)}); the factory's "
                      "module must be importable in the image (installed, or on PYTHONPATH)"
                      ) from exc
    except Exception as exc:  # a module that fails while importing: its own bug
        raise _refuse(option, f"importing {module_name} raised {_brief(exc)}; fix the module"
                      ) from exc
    if not hasattr(module, name):
        raise _refuse(option, f"{module_name} has no {name!r}; name a function or class there")
    found = getattr(module, name)
    if not callable(found):
        raise _refuse(option, f"{factory} is a {type(found).__name__}, not callable; name a "
                      "function or class that returns an nn.Module")
    return found


class FactoryModel(Normalised):
    """Normalise flat features, reshape them to `input_shape`, and call the user's `net`."""

    def __init__(
        self, spec: FactorySpec, net: nn.Module, input_shape: list[int], n_classes: int
    ) -> None:
        super().__init__()
        self.spec = spec
        self.input_shape = list(input_shape)
        self.n_classes = n_classes
        n_features = math.prod(self.input_shape)
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalised(x))


def construct(
    spec: FactorySpec, input_shape: list[int], n_classes: int, n_features: int, option: str
) -> FactoryModel:
    """Call the factory, check what it returns with one forward pass of batch 2, wrap it."""
    shape = list(input_shape)
    if math.prod(shape) != n_features:
        raise ConfigError(
            f"--input-shape {','.join(map(str, shape))} holds {math.prod(shape)} values but "
            f"the data has {n_features} features",
            option="--input-shape",
        )
    factory = import_factory(spec.factory, option)
    try:
        net = factory(n_classes=n_classes, input_shape=list(shape), **spec.kwargs)
    except Exception as exc:
        raise _refuse(option, f"{spec.factory}(n_classes={n_classes}, input_shape={shape}, "
                      f"...) raised {_brief(exc)}") from exc
    if not isinstance(net, nn.Module):
        raise _refuse(option, f"{spec.factory} returned a {type(net).__name__}; it must "
                      "return an nn.Module")
    model = FactoryModel(spec, net, shape, n_classes)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, n_features))
    except Exception as exc:
        raise _refuse(option, f"{spec.factory}'s module failed on a 2 × {shape} float "
                      f"batch: {_brief(exc)}") from exc
    finally:
        model.train(was_training)
    got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != [2, n_classes]:
        raise _refuse(option, f"{spec.factory}'s module returned {got} for a 2 × {shape} "
                      f"batch; its forward must return B × n_classes logits ([2, {n_classes}])")
    return model


class PythonFactory:
    kind = "python"
    fetches = False

    def check(self, spec: str, option: str) -> None:
        import_factory(parse(spec, option).factory, option)

    def prepare(self, spec: str, context: PrepareContext, folder: Path) -> bool:
        return False

    def build(
        self,
        spec: str,
        meta: DatasetMeta,
        stats: tuple[list[float], list[float]] | None = None,
        template: Path | None = None,
        option: str = "--student",
    ) -> nn.Module:
        if meta.kind == "text":
            raise _refuse(option, "python: factories read numeric columns; for text give "
                          "hf:, hf-config: or hf-from-teacher:")
        model = construct(
            parse(spec, option), meta.input_shape, meta.n_classes, meta.n_features, option
        )
        if stats is not None:
            model.set_normalisation(torch.tensor(stats[0]), torch.tensor(stats[1]))
        return model

    def fetch(self, spec: str, folder: Path, tracking_uri: str | None) -> Path:
        raise ConfigError(f"{spec}: a python: model is built and trained, not fetched")

    def save(
        self, model: nn.Module, folder: Path, meta: DatasetMeta, extra: dict[str, Any]
    ) -> Path:
        assert isinstance(model, FactoryModel)
        # The wrapper carries what save_model reads of a Classifier: spec.to_dict(),
        # input_shape, n_classes and the `mean` buffer.
        return save_model(
            model,  # type: ignore[arg-type]
            folder,
            meta.classes,
            meta.feature_columns,
            {"kind": self.kind, "factory": model.spec.factory, "kwargs": dict(model.spec.kwargs),
             "source": str(model.spec), **image_spec(meta), **extra},
        )

    def load(self, folder: Path) -> tuple[nn.Module, dict[str, Any]]:
        folder = Path(folder)
        saved = read_spec(folder)
        weights = folder / WEIGHTS
        if not weights.is_file():
            raise ModelFormatError(f"{folder}: no {WEIGHTS}")
        if sha256_file(weights) != saved["weights_sha256"]:
            raise ModelFormatError(
                f"{weights}: SHA-256 does not match {SPEC}; the weights were modified after saving"
            )
        if not saved.get("factory"):
            raise ModelFormatError(f"{folder / SPEC}: a python: model whose spec names no factory")
        spec = FactorySpec(str(saved["factory"]), dict(saved.get("kwargs") or {}))
        try:
            model = construct(
                spec, saved["input_shape"], int(saved["n_classes"]), int(saved["n_features"]),
                str(folder),
            )
        except ConfigError as exc:
            raise ModelFormatError(
                f"{folder}: its factory {spec.factory} no longer imports or builds: "
                f"{str(exc).removeprefix(f'{folder}: ')}"
            ) from exc
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelFormatError(f"{weights}: not a safetensors file ({exc})") from exc
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelFormatError(
                f"{weights}: tensors do not fit the module {spec.factory} builds now"
            ) from exc
        model.eval()
        return model, saved

    def layers(self, model: nn.Module) -> dict[str, nn.Module]:
        # As the zoo's: the wrapper's `net.` prefix is optional (net.fc or fc).
        named = dict(model.named_modules())
        return named | {k.removeprefix("net."): m for k, m in named.items() if k}

    def head(self, model: nn.Module) -> nn.Module:
        return penultimate_layer(model)

    def attention_maps(self, model: nn.Module) -> list[nn.Module]:
        return []

    def tokens_last(self, model: nn.Module) -> bool:
        return False
