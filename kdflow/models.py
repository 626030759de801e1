"""The model zoo: named, parametrised architectures built from a spec.

A spec is a dict `{"arch": "mlp", "hidden": [256, 256]}` or the short string
`mlp:hidden=256-256`. Every model is wrapped in `Classifier`, which owns the feature
normalisation (as buffers, so it travels inside the safetensors file) and the reshape from
flat feature columns to the sample's `input_shape`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdflow.errors import ConfigError

MLFLOW_URI_PREFIX = "models:/"


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, **self.kwargs}

    def __str__(self) -> str:
        if not self.kwargs:
            return self.arch
        parts = []
        for key, value in self.kwargs.items():
            text = "-".join(str(v) for v in value) if isinstance(value, list) else str(value)
            parts.append(f"{key}={text}")
        return f"{self.arch}:{','.join(parts)}"


def _parse_value(text: str) -> Any:
    if "-" in text.strip("-"):
        return [_parse_value(p) for p in text.split("-")]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str | dict[str, Any], option: str = "--student") -> ModelSpec:
    """Parse `mlp:hidden=256-256,dropout=0.1` or a dict; check the architecture exists."""
    if isinstance(spec, dict):
        values = dict(spec)
        arch = str(values.pop("arch", ""))
        kwargs = values
    else:
        text = spec.strip()
        arch, _, rest = text.partition(":")
        kwargs = {}
        for part in filter(None, rest.split(",")):
            key, sep, value = part.partition("=")
            if not sep or not key:
                raise ConfigError(
                    f"{option}: cannot parse {part!r} in {spec!r}; write key=value, "
                    "lists with dashes (mlp:hidden=256-256)",
                    option=option,
                )
            kwargs[key.strip()] = _parse_value(value.strip())
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"{option}: unknown architecture {arch!r} in {spec!r}; "
            f"known: {', '.join(sorted(ARCHITECTURES))}",
            option=option,
        )
    builder, allowed = ARCHITECTURES[arch]
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ConfigError(
            f"{option}: {arch} takes {', '.join(sorted(allowed))}; unknown: {', '.join(unknown)}",
            option=option,
        )
    return ModelSpec(arch, kwargs)


def _as_list(value: Any) -> list[int]:
    return [int(v) for v in (value if isinstance(value, list) else [value])]


def _mlp(
    in_shape: list[int], n_classes: int, hidden: Any = (256, 256), dropout: float = 0.0
) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(in_shape)
    for h in _as_list(list(hidden) if isinstance(hidden, tuple) else hidden):
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(float(dropout)))
        width = h
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def _cnn(
    in_shape: list[int], n_classes: int, channels: Any = (32, 64), hidden: int = 128
) -> nn.Module:
    if len(in_shape) != 3:
        raise ConfigError(
            f"cnn needs --input-shape C,H,W (e.g. 1,28,28); got {in_shape}",
            option="--input-shape",
        )
    c_in, height, width = in_shape
    layers: list[nn.Module] = []
    for c in _as_list(list(channels) if isinstance(channels, tuple) else channels):
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
        if min(height, width) >= 4:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        c_in = c
    layers += [
        nn.Flatten(),
        nn.Linear(c_in * height * width, int(hidden)),
        nn.ReLU(),
        nn.Linear(int(hidden), n_classes),
    ]
    return nn.Sequential(*layers)


# name -> (builder(in_shape, n_classes, **kwargs), accepted kwargs)
ARCHITECTURES: dict[str, tuple[Callable[..., nn.Module], set[str]]] = {
    "mlp": (_mlp, {"hidden", "dropout"}),
    "cnn": (_cnn, {"channels", "hidden"}),
}


class Classifier(nn.Module):
    """Normalise flat features, reshape them to `input_shape`, and classify."""

    def __init__(
        self, spec: ModelSpec, input_shape: list[int], n_classes: int, n_features: int
    ) -> None:
        super().__init__()
        if math.prod(input_shape) != n_features:
            raise ConfigError(
                f"--input-shape {','.join(map(str, input_shape))} holds "
                f"{math.prod(input_shape)} values but the data has {n_features} features",
                option="--input-shape",
            )
        self.spec = spec
        self.input_shape = list(input_shape)
        self.n_classes = n_classes
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        builder, _ = ARCHITECTURES[spec.arch]
        self.net = builder(self.input_shape, n_classes, **spec.kwargs)

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        # A constant feature has std 0: leave it unscaled rather than divide by zero.
        self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return self.net(x.view(x.shape[0], *self.input_shape))


def build_classifier(
    spec: ModelSpec | str, input_shape: list[int], n_classes: int, n_features: int
) -> Classifier:
    if isinstance(spec, str):
        spec = parse_spec(spec)
    try:
        return Classifier(spec, input_shape, n_classes, n_features)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"cannot build {spec}: {exc}") from exc


def count_params(model: nn.Module) -> int:
    """Trainable parameters (normalisation buffers are not parameters)."""
    return sum(p.numel() for p in model.parameters())
