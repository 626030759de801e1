"""The zoo as a model source: `mlp:hidden=256-256`, `cnn`, `cnn1d`, `resnet`, `transformer`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdflow.data.images import image_spec
from kdflow.data.prepared import DatasetMeta
from kdflow.errors import ConfigError
from kdflow.models.artifacts import load_model, save_model
from kdflow.models.sources import PrepareContext
from kdflow.models.zoo import (
    Classifier,
    attention_modules,
    build_classifier,
    parse_spec,
    penultimate_layer,
)


class Zoo:
    kind = "zoo"
    fetches = False

    def check(self, spec: str, option: str) -> None:
        parse_spec(spec, option)

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
        if meta.kind not in ("columns", "image"):
            raise ConfigError(
                f"{option}: {spec}: a zoo model reads numeric columns; this data is {meta.kind} "
                "(give an hf-config:, hf-from-teacher: or hf: model)",
                option=option,
            )
        model = build_classifier(
            parse_spec(spec), meta.input_shape, meta.n_classes, meta.n_features
        )
        if stats is not None:
            model.set_normalisation(torch.tensor(stats[0]), torch.tensor(stats[1]))
        return model

    def fetch(
        self,
        spec: str,
        folder: Path,
        tracking_uri: str | None,
        context: PrepareContext | None = None,
    ) -> Path:
        raise ConfigError(f"{spec}: a zoo model is built and trained, not fetched")

    def save(
        self, model: nn.Module, folder: Path, meta: DatasetMeta, extra: dict[str, Any]
    ) -> Path:
        assert isinstance(model, Classifier)
        return save_model(
            model,
            folder,
            meta.classes,
            meta.feature_columns,
            {"kind": self.kind, **image_spec(meta), **extra},
        )

    def load(self, folder: Path) -> tuple[nn.Module, dict[str, Any]]:
        return load_model(folder)

    def layers(self, model: nn.Module) -> dict[str, nn.Module]:
        # The Classifier's `net.` prefix is optional in a layer name (net.3 or 3).
        named = dict(model.named_modules())
        return named | {k.removeprefix("net."): m for k, m in named.items() if k}

    def head(self, model: nn.Module) -> nn.Module:
        return penultimate_layer(model)

    def attention_maps(self, model: nn.Module) -> list[nn.Module]:
        return attention_modules(model)

    def tokens_last(self, model: nn.Module) -> bool:
        # Transformers carry tokens as B × L × D; the CNN families as B × C × L (or × H × W).
        return isinstance(model, Classifier) and model.spec.arch == "transformer"
