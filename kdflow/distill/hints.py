"""What feature (FitNets) and attention (MiniLM/TinyBERT) distillation need around the
models: which layers pair up, forward hooks that record them, pooling to a common shape,
and the student's learned projections.

Features of any family meet in one of two shapes. When the teacher's and the student's
layers are both image maps (B × C × H × W), both are average-pooled to the smaller H × W
and a 1×1 convolution maps the student's channels to the teacher's (FitNets' convolutional
regressor). Otherwise each side is average-pooled over its positions (pixels, sequence
steps or tokens) to a vector per sample and a linear layer maps the student's width to the
teacher's: that is how a CNN teacher guides an MLP student.

The projections belong to `HintedStudent`, which wraps the student during training only:
they train with the student's optimizer and are checkpointed, but the exported student is
`HintedStudent.student`, a plain `Classifier` that knows nothing of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdflow.config import DistillConfig
from kdflow.distill.losses import layer_map
from kdflow.errors import ConfigError
from kdflow.models.sources import ModelSource, source_for
from kdflow.models.zoo import Classifier

PENULTIMATE = "penultimate"
"""Layer name meaning "the input of the classifier head" (the last Linear), in any family."""
FEATURE_OPTION = "--feature-layers"
ATTENTION_OPTION = "--attention-weight"


def feature_pairs(cfg: DistillConfig) -> list[tuple[str, str]]:
    """The (teacher layer, student layer) pairs of the FitNets hints (none when off)."""
    if not cfg.feature_weight:
        return []
    if not cfg.feature_layers:
        return [(PENULTIMATE, PENULTIMATE)]
    return [tuple(p.split("=", 1)) for p in cfg.feature_layers]  # type: ignore[misc]


class Recorder:
    """Forward hooks that keep the latest output (or, for PENULTIMATE, input) of modules."""

    def __init__(self, modules: list[nn.Module], inputs: list[bool]) -> None:
        self.values: list[torch.Tensor | None] = [None] * len(modules)
        self.handles = []
        for i, (module, use_input) in enumerate(zip(modules, inputs, strict=True)):
            if use_input:
                hook = module.register_forward_pre_hook(self._pre(i))
            else:
                hook = module.register_forward_hook(self._post(i))
            self.handles.append(hook)

    def _pre(self, i: int) -> Any:
        def record(_module: nn.Module, args: tuple[Any, ...]) -> None:
            self.values[i] = args[0]

        return record

    def _post(self, i: int) -> Any:
        def record(_module: nn.Module, _args: Any, out: torch.Tensor) -> None:
            self.values[i] = out

        return record

    def take(self) -> list[torch.Tensor]:
        """The recorded tensors, cleared so a stale value is never read twice."""
        values, self.values = self.values, [None] * len(self.values)
        missing = [i for i, v in enumerate(values) if v is None]
        if missing:
            raise RuntimeError(f"hooked layers {missing} did not run in the forward pass")
        return values  # type: ignore[return-value]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _layer(model: nn.Module, source: ModelSource, name: str, role: str) -> tuple[nn.Module, bool]:
    """The layer `name` of a model as its source names them; True where the hint is the
    layer's input (the penultimate features), not its output."""
    if name == PENULTIMATE:
        return source.head(model), True
    layers = source.layers(model)
    if name in layers:
        return layers[name], False
    known = [n for n, _ in model.named_modules() if n]
    shown = ", ".join(known[:40]) + (" ..." if len(known) > 40 else "")
    raise ConfigError(
        f"{FEATURE_OPTION}: no layer {name!r} in the {role} ({getattr(model, 'spec', '')}); "
        f"layers: {shown}",
        option=FEATURE_OPTION,
    )


def pool(
    feature: torch.Tensor, channels_last: bool, spatial: tuple[int, int] | None
) -> torch.Tensor:
    """A layer's output in the pair's common shape (see the module docstring)."""
    if feature.dim() == 4:
        if spatial is not None:
            return F.adaptive_avg_pool2d(feature, spatial)
        return feature.mean((2, 3))
    if feature.dim() == 3:
        return feature.mean(1) if channels_last else feature.mean(2)
    return feature.flatten(1)


@dataclass
class Pair:
    teacher_layer: str
    student_layer: str
    teacher_channels_last: bool
    student_channels_last: bool
    spatial: tuple[int, int] | None
    student_width: int
    teacher_width: int
    tokens: bool = False
    """Kept per token (B × L × D, `--feature-loss cosine`) rather than pooled."""

    def projection(self) -> nn.Module:
        if self.tokens and self.student_width == self.teacher_width:
            return nn.Identity()  # DistilBERT compares equal widths as they are
        if self.spatial is not None:
            return nn.Conv2d(self.student_width, self.teacher_width, 1)
        return nn.Linear(self.student_width, self.teacher_width)

    def shape(self, feature: torch.Tensor, channels_last: bool) -> torch.Tensor:
        """A layer's output as the pair compares it: per token, or pooled (`pool`)."""
        return feature if self.tokens else pool(feature, channels_last, self.spatial)


@dataclass
class Plan:
    """The resolved hints of one (teacher, student) pair of models, and the sources that
    name those models' layers."""

    pairs: list[Pair]
    attention_map: list[int]  # teacher layer for each student attention layer
    feature_weight: float
    attention_weight: float
    teacher_source: ModelSource
    student_source: ModelSource
    feature_loss: str = "mse"
    """`mse` (FitNets, pooled) or `cosine` (DistilBERT, per token)."""


def _probe(model: Classifier, modules: list[tuple[nn.Module, bool]]) -> list[torch.Tensor]:
    recorder = Recorder([m for m, _ in modules], [u for _, u in modules])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            example = getattr(model, "example_input", None)
            # A model of token ids says what a valid input is; numeric rows can be zeros.
            x = example(2) if callable(example) else torch.zeros(
                2, math.prod(model.input_shape), device=device
            )
            model(x)
        return recorder.take()
    finally:
        recorder.remove()
        model.train(was_training)


def make_plan(
    cfg: DistillConfig,
    teacher: Classifier,
    student: Classifier,
    teacher_source: ModelSource | None = None,
    student_source: ModelSource | None = None,
) -> Plan:
    """Resolve layer names and shapes with one dummy forward pass of each model; every
    mistake (a layer that does not exist, attention without transformers, different token
    counts) is a ConfigError naming the option. The sources name the models' layers
    (default: the zoo's)."""
    t_src = teacher_source or source_for("")
    s_src = student_source or source_for("")
    pairs: list[Pair] = []
    names = feature_pairs(cfg)
    if names:
        t_layers = [_layer(teacher, t_src, t, "teacher") for t, _ in names]
        s_layers = [_layer(student, s_src, s, "student") for _, s in names]
        t_out, s_out = _probe(teacher, t_layers), _probe(student, s_layers)
        for (t_name, s_name), t, s in zip(names, t_out, s_out, strict=True):
            spatial = None
            if t.dim() == 4 and s.dim() == 4:
                spatial = (min(t.shape[2], s.shape[2]), min(t.shape[3], s.shape[3]))
            t_last, s_last = t_src.tokens_last(teacher), s_src.tokens_last(student)
            if cfg.feature_loss == "cosine":
                pairs.append(_token_pair(t_name, s_name, t, s, t_last and s_last))
                continue
            t_width = pool(t, t_last, spatial).shape[1]
            s_width = pool(s, s_last, spatial).shape[1]
            pairs.append(Pair(t_name, s_name, t_last, s_last, spatial, s_width, t_width))
    mapping: list[int] = []
    if cfg.attention_weight:
        t_att, s_att = t_src.attention_maps(teacher), s_src.attention_maps(student)
        for role, model, found in (("teacher", teacher, t_att), ("student", student, s_att)):
            if not found:
                raise ConfigError(
                    f"{ATTENTION_OPTION}: attention distillation needs transformer teacher and "
                    f"student; the {role} is {model.spec}",
                    option=ATTENTION_OPTION,
                )
        t_maps = _probe(teacher, [(m, False) for m in t_att[-1:]])
        s_maps = _probe(student, [(m, False) for m in s_att[-1:]])
        if t_maps[0].shape[-1] != s_maps[0].shape[-1]:
            raise ConfigError(
                f"{ATTENTION_OPTION}: the teacher ({teacher.spec}) attends over "
                f"{t_maps[0].shape[-1]} tokens, the student ({student.spec}) over "
                f"{s_maps[0].shape[-1]}; give both the same patch size",
                option=ATTENTION_OPTION,
            )
        mapping = layer_map(len(s_att), len(t_att))
    return Plan(
        pairs, mapping, cfg.feature_weight, cfg.attention_weight, t_src, s_src, cfg.feature_loss
    )


def _token_pair(
    t_name: str, s_name: str, t: torch.Tensor, s: torch.Tensor, tokens_last: bool
) -> Pair:
    """A `--feature-loss cosine` pair: per-token hidden states (B × L × D) on both sides with
    the same token count, or vectors (B × D, e.g. the penultimate features)."""
    per_token = t.dim() == 3 and s.dim() == 3 and tokens_last
    if not per_token and not (t.dim() == 2 and s.dim() == 2):
        raise ConfigError(
            f"--feature-loss cosine: compares hidden states token by token (B × L × D) or "
            f"vectors (B × D); {t_name} is {tuple(t.shape)}, {s_name} is {tuple(s.shape)} "
            "(use --feature-loss mse for other layers)",
            option="--feature-loss",
        )
    if per_token and t.shape[1] != s.shape[1]:
        raise ConfigError(
            f"--feature-loss cosine: {t_name} has {t.shape[1]} tokens, {s_name} "
            f"{s.shape[1]}; the models must read the same tokens (hf-from-teacher:)",
            option="--feature-loss",
        )
    return Pair(t_name, s_name, True, True, None, int(s.shape[-1]), int(t.shape[-1]),
                tokens=per_token)


class TeacherTaps:
    """Hooks on the hint teacher: after each forward pass, its pooled features and the
    attention maps of the teacher layers the student's layers map to."""

    def __init__(self, teacher: Classifier, plan: Plan) -> None:
        self.plan = plan
        source = plan.teacher_source
        self.features = Recorder(
            *_unzip([_layer(teacher, source, p.teacher_layer, "teacher") for p in plan.pairs])
        )
        attention = source.attention_maps(teacher)
        used = sorted(set(plan.attention_map))
        self.slot = {layer: i for i, layer in enumerate(used)}
        self.attention = Recorder([attention[i] for i in used], [False] * len(used))

    def take(self) -> dict[str, list[torch.Tensor]]:
        features = [
            p.shape(f, p.teacher_channels_last).float()
            for f, p in zip(self.features.take(), self.plan.pairs, strict=True)
        ]
        maps = self.attention.take() if self.plan.attention_map else []
        return {
            "features": features,
            "attention": [maps[self.slot[t]].float() for t in self.plan.attention_map],
        }


def _unzip(layers: list[tuple[nn.Module, bool]]) -> tuple[list[nn.Module], list[bool]]:
    return [m for m, _ in layers], [u for _, u in layers]


class HintedStudent(nn.Module):
    """The student with the learned projections of its hints. `forward` returns the
    logits, the projected features and the attention maps; only `student` is exported."""

    def __init__(self, student: Classifier, plan: Plan) -> None:
        super().__init__()
        self.student = student
        self.projections = nn.ModuleList([p.projection() for p in plan.pairs])
        self.plan = plan
        source = plan.student_source
        self._features = Recorder(
            *_unzip([_layer(student, source, p.student_layer, "student") for p in plan.pairs])
        )
        attention = source.attention_maps(student) if plan.attention_map else []
        self._attention = Recorder(attention, [False] * len(attention))

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        logits = self.student(x)
        features = [
            projection(p.shape(f, p.student_channels_last))
            for f, p, projection in zip(
                self._features.take(), self.plan.pairs, self.projections, strict=True
            )
        ]
        maps = self._attention.take() if self.plan.attention_map else []
        return logits, features, maps
