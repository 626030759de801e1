"""Registered models as a model source: `models:/name@alias` or `models:/name/VERSION`.

A registered kdflow model is fetched (downloaded from the registry) and then loaded by the
source that saved it, as any saved model folder is.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from kdflow.data.prepared import DatasetMeta
from kdflow.errors import ConfigError
from kdflow.models.sources import load_saved


class RegisteredModels:
    kind = "registered"
    fetches = True

    def check(self, spec: str, option: str) -> None:
        if not spec.removeprefix("models:/").strip("/"):
            raise ConfigError(
                f"{option}: {spec!r} names no model; write models:/NAME@ALIAS or "
                "models:/NAME/VERSION",
                option=option,
            )

    def build(
        self, spec: str, meta: DatasetMeta, stats: tuple[list[float], list[float]] | None = None
    ) -> nn.Module:
        raise ConfigError(
            f"{spec}: a registered model is fetched (as a teacher), not built", option="--student"
        )

    def fetch(self, spec: str, folder: Path, tracking_uri: str | None) -> Path:
        from kdflow.mlflow.client import resolve_tracking_uri
        from kdflow.mlflow.logged_models import download_model

        with tempfile.TemporaryDirectory() as tmp:
            found = download_model(resolve_tracking_uri(tracking_uri), spec, Path(tmp))
            shutil.copytree(found, folder, dirs_exist_ok=True)
        return folder

    def save(
        self, model: nn.Module, folder: Path, meta: DatasetMeta, extra: dict[str, Any]
    ) -> Path:
        raise ConfigError("a registered model is saved by the source that built it")

    def load(self, folder: Path) -> tuple[nn.Module, dict[str, Any]]:
        return load_saved(folder)

    # A fetched model is a saved folder, loaded (and its layers named) by the source of the
    # kind it was saved as (`kdflow.models.sources.source_of_folder`), never by this one.
    def layers(self, model: nn.Module) -> dict[str, nn.Module]:
        raise ConfigError("a registered model's layers are named by the source that saved it")

    head = layers  # type: ignore[assignment]
    attention_maps = layers  # type: ignore[assignment]
    tokens_last = layers  # type: ignore[assignment]
