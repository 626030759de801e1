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
    _check_sizes(ModelSpec(arch, kwargs), option)
    return ModelSpec(arch, kwargs)


LAYER_LISTS = {"hidden", "channels"}
"""Parameters that may list one size per layer (`hidden=256-256`); cnn's `hidden` is one."""


def _check_sizes(spec: ModelSpec, option: str) -> None:
    """Every size (widths, channels, depth, heads, kernel, patch) a whole number >= 1 and
    dropout in [0, 1): a layer of zero units builds and trains silently to chance, and a
    negative one fails deep inside torch."""
    for key, value in spec.kwargs.items():
        shown = "-".join(map(str, value)) if isinstance(value, list) else str(value)
        if key == "dropout":
            number = value if isinstance(value, int | float) else None
            if isinstance(value, bool) or number is None or not 0 <= number < 1:
                raise ConfigError(
                    f"{option}: {spec}: dropout must be a number in [0, 1), got {shown}",
                    option=option,
                )
            continue
        listed = key in LAYER_LISTS and not (spec.arch == "cnn" and key == "hidden")
        values = value if isinstance(value, list) and listed else [value]
        if not all(_whole(v) for v in values):
            what = "whole numbers >= 1, one per layer" if listed else "a whole number >= 1"
            raise ConfigError(f"{option}: {spec}: {key} must be {what}, got {shown}",
                              option=option)


def _whole(value: Any) -> bool:
    """A whole number of 1 or more (1 and 1.0, not True, 0, -4 or 1.5)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 1 and value == int(value))


def describe(saved: dict[str, Any]) -> str:
    """The spec string of a saved model from its spec.json: its source as given (`hf:...`,
    `python:...`), or its zoo spec (`mlp:hidden=12`)."""
    if saved.get("source"):
        return str(saved["source"])
    return str(parse_spec(saved["model"], option="spec.json"))


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


def _channels(value: Any) -> list[int]:
    return _as_list(list(value) if isinstance(value, tuple) else value)


def _cnn1d(
    in_shape: list[int],
    n_classes: int,
    channels: Any = (16, 32),
    kernel: int = 5,
    hidden: int = 64,
) -> nn.Module:
    """1-D CNN over a sequence: `input_shape` L (one channel) or C,L."""
    if len(in_shape) not in (1, 2):
        raise ConfigError(
            f"cnn1d needs --input-shape L or C,L (e.g. 1,64); got {in_shape}",
            option="--input-shape",
        )
    c_in, length = (1, in_shape[0]) if len(in_shape) == 1 else (in_shape[0], in_shape[1])
    kernel = int(kernel)
    if kernel < 1 or kernel % 2 == 0:
        raise ConfigError(f"cnn1d: kernel must be an odd integer >= 1, got {kernel}")
    layers: list[nn.Module] = [nn.Unflatten(1, (c_in, length))] if len(in_shape) == 1 else []
    for c in _channels(channels):
        layers += [nn.Conv1d(c_in, c, kernel, padding=kernel // 2), nn.BatchNorm1d(c), nn.ReLU()]
        if length >= 4:
            layers.append(nn.MaxPool1d(2))
            length //= 2
        c_in = c
    layers += [
        nn.Flatten(),
        nn.Linear(c_in * length, int(hidden)),
        nn.ReLU(),
        nn.Linear(int(hidden), n_classes),
    ]
    return nn.Sequential(*layers)


class _ResidualBlock(nn.Module):
    """He et al. 2016's basic block: two 3×3 convolutions plus a (projected) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _resnet(
    in_shape: list[int], n_classes: int, depth: int = 1, width: int = 16
) -> nn.Module:
    """A small ResNet: a 3×3 stem, then three stages of `depth` basic blocks with `width`,
    2·`width` and 4·`width` channels (stages 2 and 3 halve the image while it is ≥ 4 pixels),
    global average pooling and a linear head."""
    if len(in_shape) != 3:
        raise ConfigError(
            f"resnet needs --input-shape C,H,W (e.g. 1,28,28); got {in_shape}",
            option="--input-shape",
        )
    depth, width = int(depth), int(width)
    if depth < 1 or width < 1:
        raise ConfigError(f"resnet: depth and width must be >= 1, got {depth}, {width}")
    c_in, rows, cols = in_shape
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    ]
    c_in = width
    for stage in range(3):
        c_out = width * 2**stage
        for block in range(depth):
            stride = 2 if stage > 0 and block == 0 and min(rows, cols) >= 4 else 1
            if stride == 2:
                rows, cols = (rows + 1) // 2, (cols + 1) // 2
            layers.append(_ResidualBlock(c_in, c_out, stride))
            c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, n_classes)]
    return nn.Sequential(*layers)


class SelfAttention(nn.Module):
    """Multi-head self-attention whose attention maps pass through `self.softmax`, so a
    forward hook there sees them (batch × heads × tokens × tokens); see `attention_modules`."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, dim = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(-1, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attention = self.softmax((q * self.scale) @ k.transpose(-2, -1))
        return self.proj((attention @ v).transpose(1, 2).reshape(-1, tokens, dim))


class _EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block (Vaswani et al. 2017; pre-norm as in ViT)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _Tokens(nn.Module):
    """Sample → tokens (batch × L × dim): C,H,W images as non-overlapping patch×patch
    patches (ViT), L,F sequences as L tokens of F features, flat F features as F tokens of
    one value each (FT-Transformer's feature tokens)."""

    def __init__(self, in_shape: list[int], dim: int, patch: int) -> None:
        super().__init__()
        self.image = len(in_shape) == 3
        if self.image:
            c, h, w = in_shape
            if patch < 1 or h % patch or w % patch:
                raise ConfigError(
                    f"transformer: patch={patch} must divide the image's {h}x{w} pixels",
                    option="--input-shape",
                )
            self.embed: nn.Module = nn.Conv2d(c, dim, patch, stride=patch)
            self.count = (h // patch) * (w // patch)
        elif len(in_shape) == 2:
            self.embed = nn.Linear(in_shape[1], dim)
            self.count = in_shape[0]
        else:
            self.embed = nn.Linear(1, dim)
            self.count = in_shape[0]
        self.flat = len(in_shape) == 1
        self.position = nn.Parameter(torch.zeros(1, self.count, dim))
        nn.init.trunc_normal_(self.position, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image:
            x = self.embed(x).flatten(2).transpose(1, 2)
        else:
            x = self.embed(x.unsqueeze(-1) if self.flat else x)
        return x + self.position


class _Transformer(nn.Module):
    def __init__(self, tokens: _Tokens, blocks: list[_EncoderBlock], dim: int, n_classes: int):
        super().__init__()
        self.tokens = tokens
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Mean over tokens rather than a class token: one fewer parameter to explain.
        return self.head(self.norm(self.blocks(self.tokens(x))).mean(1))


def _transformer(
    in_shape: list[int],
    n_classes: int,
    dim: int = 32,
    depth: int = 2,
    heads: int = 4,
    mlp: int = 2,
    patch: int = 4,
) -> nn.Module:
    """Encoder-only transformer over patches (C,H,W), tokens (L,F) or feature tokens (F)."""
    dim, depth, heads, mlp, patch = int(dim), int(depth), int(heads), int(mlp), int(patch)
    if heads < 1 or dim % heads:
        raise ConfigError(f"transformer: dim={dim} must be a multiple of heads={heads}")
    if depth < 1 or mlp < 1:
        raise ConfigError(f"transformer: depth and mlp must be >= 1, got {depth}, {mlp}")
    tokens = _Tokens(in_shape, dim, patch)
    return _Transformer(
        tokens, [_EncoderBlock(dim, heads, mlp) for _ in range(depth)], dim, n_classes
    )


# name -> (builder(in_shape, n_classes, **kwargs), accepted kwargs)
ARCHITECTURES: dict[str, tuple[Callable[..., nn.Module], set[str]]] = {
    "mlp": (_mlp, {"hidden", "dropout"}),
    "cnn": (_cnn, {"channels", "hidden"}),
    "cnn1d": (_cnn1d, {"channels", "kernel", "hidden"}),
    "resnet": (_resnet, {"depth", "width"}),
    "transformer": (_transformer, {"dim", "depth", "heads", "mlp", "patch"}),
}


AUTO = "auto"
"""The teacher spec that stands for `default_teachers(input_shape)`."""

DEFAULT_TEACHERS: dict[int, list[str]] = {
    # C,H,W images: three CNN families of different widths and depths.
    3: ["cnn:channels=32-64", "cnn:channels=16-32,hidden=64", "cnn:channels=32-32-64,hidden=128"],
    # C,L sequences: 1-D CNNs.
    2: [
        "cnn1d:channels=16-32,kernel=5,hidden=64",
        "cnn1d:channels=32-64,kernel=3,hidden=128",
        "cnn1d:channels=16-32-64,kernel=5,hidden=64",
    ],
    # Flat feature columns: MLPs (benchmarks/results/methods.md, tabular).
    1: ["mlp:hidden=256-256,dropout=0.2", "mlp:hidden=512,dropout=0.3",
        "mlp:hidden=128-128-128,dropout=0.2"],
}


def default_teachers(input_shape: list[int]) -> list[str]:
    """Three zoo teachers that fit samples of `input_shape` (C,H,W; C,L; or flat)."""
    return list(DEFAULT_TEACHERS[min(len(input_shape), 3)])


LM_TEACHER = "hf-config:gpt2:n_layer=4,n_embd=128,n_head=4"
"""`auto` on a corpus (--task causal-lm): a small GPT-2 trained on it, with a BPE of its own."""
TEXT_TEACHER = (
    "hf-config:bert:hidden_size=128,num_hidden_layers=4,num_attention_heads=4,"
    "intermediate_size=512"
)
"""`auto` on text data: one small BERT trained in the pipeline, with its own WordPiece."""


def resolve_teachers(
    teachers: list[str], input_shape: list[int], kind: str = "columns"
) -> list[str]:
    """The teacher specs of a run: `auto` alone becomes `default_teachers(input_shape)`, or
    on text data `TEXT_TEACHER`, on a corpus `LM_TEACHER`."""
    if teachers != [AUTO]:
        return list(teachers)
    if kind == "corpus":
        return [LM_TEACHER]
    return [TEXT_TEACHER] if kind == "text" else default_teachers(input_shape)


class Normalised(nn.Module):
    """Inputs normalised by `mean` and `std` buffers (one value per feature or pixel, so
    they travel inside the safetensors file) and reshaped to `input_shape`: what the zoo's
    `Classifier` and the `python:` source's wrapper do before their network."""

    mean: torch.Tensor  # buffers, registered by the subclass's __init__
    std: torch.Tensor
    input_shape: list[int]

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        # A constant feature has std 0: leave it unscaled rather than divide by zero.
        self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """Flat columns (N × F) or images (N × C × H × W, uint8 pixels or augmented floats),
        normalised and shaped as one sample of `input_shape`."""
        x = (x.reshape(x.shape[0], -1).float() - self.mean) / self.std
        return x.view(x.shape[0], *self.input_shape)


class Classifier(Normalised):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalised(x))


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


def flops(model: nn.Module, input_shape: list[int] | tuple[int, ...]) -> int:
    """FLOPs of one forward pass on one sample of `input_shape` (no batch axis; a kdflow
    `Classifier` takes its flat features: `[n_features]`).

    Convention: torch's FlopCounterMode, i.e. matrix multiplications (Linear, attention's
    Q·Kᵀ and A·V) and convolutions, one multiply-add counted as 2 FLOPs; elementwise work
    (activations, normalisation, softmax, pooling, residual adds, biases) is not counted.
    A Linear(i, o) costs 2·i·o; a Conv2d(c, k, kernel h×w) over an H'×W' output
    2·c·k·h·w·H'·W'.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def profile(model: Classifier) -> dict[str, int]:
    """A zoo model's size and cost: trainable parameters and FLOPs per sample."""
    return {"params": count_params(model), "flops": flops(model, [math.prod(model.input_shape)])}


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The softmax of every self-attention layer, in depth order (empty when none):
    a forward hook on each sees that layer's attention maps."""
    return [m.softmax for m in model.modules() if isinstance(m, SelfAttention)]


def penultimate_layer(model: nn.Module) -> nn.Module:
    """The classifier head: the last Linear, whose input is the penultimate features."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{getattr(model, 'spec', model)} has no linear head")
    return linears[-1]
