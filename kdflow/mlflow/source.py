"""Registered models as a model source: `models:/name@alias` or `models:/name/VERSION`.

A registered kdflow model is fetched (downloaded from the registry) and then loaded by the
source that saved it, as any saved model folder is.

A registered MLflow `transformers` model (logged with `mlflow.transformers.log_model`; its
MLmodel file lists a `transformers` flavour) is turned into a kdflow transformers folder.
MLflow lays it out as

    MLmodel                      flavors.transformers: model_binary: model,
                                 components: [tokenizer], task, ...
    model/                       the model's save_pretrained files (config.json,
                                 model.safetensors or its shards)
    components/tokenizer/        the tokenizer's save_pretrained files (tokenizer.json,
                                 tokenizer_config.json, vocab files)

The two folders are put together as one save_pretrained folder and imported through the
`hf:` source (`kdflow.models.hf_source.Pretrained`), so its checks hold: safetensors weights
only, a text classifier and not a generative model, and labels that are the data's.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from kdflow.data.prepared import DatasetMeta
from kdflow.errors import ConfigError
from kdflow.models.sources import PrepareContext, load_saved

TRANSFORMERS_FLAVOR = "transformers"
MODEL_BINARY = "model"
"""The MLmodel key (and MLflow's default folder) of a transformers model's weights."""
COMPONENTS = "components"
"""The folder of a transformers model's pipeline components (its tokenizer among them)."""


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
        raise ConfigError(
            f"{option}: {spec}: a registered model is fetched (as a teacher), not built",
            option=option,
        )

    def fetch(
        self,
        spec: str,
        folder: Path,
        tracking_uri: str | None,
        context: PrepareContext | None = None,
    ) -> Path:
        from kdflow.mlflow.client import resolve_tracking_uri
        from kdflow.mlflow.logged_models import download_registered, flavors, kdflow_folder

        uri = resolve_tracking_uri(tracking_uri)
        with tempfile.TemporaryDirectory(prefix="kdflow-registered-") as tmp:
            local = download_registered(uri, spec, Path(tmp) / "download")
            flavor = flavors(local).get(TRANSFORMERS_FLAVOR)
            if isinstance(flavor, dict):
                return from_transformers_flavor(
                    local, flavor, spec, folder, context, Path(tmp) / "hf"
                )
            shutil.copytree(kdflow_folder(local, spec), folder, dirs_exist_ok=True)
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


def from_transformers_flavor(
    local: Path,
    flavor: dict[str, Any],
    spec: str,
    folder: Path,
    context: PrepareContext | None,
    staging: Path,
) -> Path:
    """Import a downloaded MLflow transformers model (`local`, its MLmodel's transformers
    flavour `flavor`) into `folder` as a kdflow transformers folder, through the `hf:` source
    with the data of `context`; `staging` is a scratch folder."""
    from kdflow.models.hf_source import Pretrained

    if context is None:
        raise ConfigError(
            f"{spec} is an MLflow transformers model: fetching it needs the data (its labels "
            "are checked against the data's classes)"
        )
    staged = stage_transformers(local, flavor, spec, context.option, staging)
    local_spec = f"hf:{staged}"
    try:
        Pretrained().fetch(local_spec, folder, None, context)
    except ConfigError as exc:
        # Name the registered model, not the scratch folder it was imported from.
        message = str(exc).replace(local_spec, spec).replace(str(staged), spec)
        raise ConfigError(message, option=exc.option) from exc
    saved = json.loads((folder / "spec.json").read_text())
    saved["source"] = spec
    saved["registered"] = {
        "flavor": TRANSFORMERS_FLAVOR,
        "task": flavor.get("task"),
        "transformers_version": flavor.get("transformers_version"),
    }
    (folder / "spec.json").write_text(json.dumps(saved, indent=2))
    return folder


def stage_transformers(
    local: Path, flavor: dict[str, Any], spec: str, option: str, staging: Path
) -> Path:
    """One save_pretrained folder from a transformers flavour's model and tokenizer folders
    (`model/` and `components/tokenizer/`, as the MLmodel file names them)."""
    if flavor.get("peft_adaptor"):
        raise ConfigError(
            f"{option}: {spec} is a PEFT adapter; merge it into its base model "
            "(`merge_and_unload()`) and log the merged model",
            option=option,
        )
    binary = flavor.get("model_binary")
    if not binary:
        base = flavor.get("source_model_name") or flavor.get("local_base_model_path")
        hint = f" (it points at {base!r}: give hf:{base} instead)" if base else ""
        raise ConfigError(
            f"{option}: {spec} was logged without its weights (save_pretrained=False){hint}",
            option=option,
        )
    model_dir = local / str(binary)
    if not model_dir.is_dir():
        raise ConfigError(
            f"{option}: {spec}: its MLmodel names weights in {binary}/, which it lacks",
            option=option,
        )
    components = [str(c) for c in flavor.get("components") or []]
    if "tokenizer" not in components:
        raise ConfigError(
            f"{option}: {spec} has no tokenizer (components: {', '.join(components) or 'none'}); "
            "log it with transformers_model={'model': ..., 'tokenizer': ...}",
            option=option,
        )
    tokenizer_dir = local / COMPONENTS / "tokenizer"
    if not tokenizer_dir.is_dir():
        raise ConfigError(
            f"{option}: {spec}: its MLmodel lists a tokenizer but {COMPONENTS}/tokenizer/ "
            "is missing",
            option=option,
        )
    staging.mkdir(parents=True, exist_ok=True)
    shutil.copytree(model_dir, staging, dirs_exist_ok=True)
    for path in tokenizer_dir.iterdir():
        target = staging / path.name
        if target.exists():
            continue  # the model folder's own file (config.json) wins
        if path.is_dir():
            shutil.copytree(path, target)
        else:
            shutil.copy2(path, target)
    return staging
