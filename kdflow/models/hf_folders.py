"""Where a pretrained `hf:` model lies and what its folder must hold, before any model
library loads it: a local folder, a copy of an s3:// prefix, or a hub snapshot; a
config.json, safetensors weights (pickled ones are refused), and a head the task needs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from kdflow.data import storage
from kdflow.errors import ConfigError

CAUSAL = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
"""Architecture name endings of generative models: not classifiers."""


def short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def checked_folder(where: Path, spec: str, option: str, causal: bool = False) -> dict[str, Any]:
    """The folder's config.json, after the checks that need no model library."""
    if not where.is_dir():
        raise ConfigError(f"{option}: {spec}: no such folder {where}", option=option)
    if not (where / "config.json").is_file():
        raise ConfigError(
            f"{option}: {spec}: no config.json in {where}; give a folder written by "
            "save_pretrained",
            option=option,
        )
    if not list(where.glob("*.safetensors")):
        pickled = [p.name for p in where.glob("*.bin")] + [p.name for p in where.glob("*.pt")]
        hint = (
            f" (found {', '.join(pickled)}: pickled weights are never loaded; convert with "
            "`AutoModel.from_pretrained(folder).save_pretrained(folder)` where you trust them)"
            if pickled else ""
        )
        raise ConfigError(f"{option}: {spec}: no safetensors weights in {where}{hint}",
                          option=option)
    config: dict[str, Any] = json.loads((where / "config.json").read_text())
    architectures = config.get("architectures") or []
    if not causal and any(a.endswith(CAUSAL) for a in architectures):
        raise ConfigError(
            f"{option}: {spec} is a generative model ({architectures[0]}), not a text "
            "classifier; give a ...ForSequenceClassification model or an encoder to fine-tune "
            "(or distil it with --task causal-lm)",
            option=option,
        )
    return config


def check_classifier_folder(spec: str, option: str) -> None:
    """ConfigError when a local `hf:` folder holds a generative model (classification runs;
    the preflight's early form of `_import`'s check)."""
    location = spec.removeprefix("hf:").strip()
    if spec.startswith("hf:") and not storage.is_remote(location) and is_local(location):
        checked_folder(Path(location).expanduser(), spec, option)


def is_local(location: str) -> bool:
    """A path on this machine, rather than a hub id (`org/name`)."""
    return (
        Path(location).expanduser().exists()
        or location.startswith((".", "/", "~"))
        or location.count("/") != 1
    )


class located:
    """The spec's folder on local disk: itself, a copy of an s3:// prefix, or a hub
    snapshot (honouring HF_HUB_OFFLINE); the copies are removed afterwards."""

    def __init__(self, spec: str, option: str) -> None:
        self.location, self.option, self.spec = spec.removeprefix("hf:"), option, spec
        self.tmp: str | None = None

    def __enter__(self) -> Path:
        location = self.location
        if storage.is_remote(location):
            self.tmp = tempfile.mkdtemp(prefix="kdflow-hf-")
            try:
                return storage.download_dir(location, Path(self.tmp))
            except Exception as exc:  # StorageError and the S3 client's own
                raise ConfigError(f"{self.option}: {self.spec}: {short(exc)}",
                                  option=self.option) from exc
        if is_local(location):
            return Path(location).expanduser()
        return self._hub(location)

    def _hub(self, repo: str) -> Path:
        from huggingface_hub import snapshot_download

        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        try:
            return Path(snapshot_download(
                repo, local_files_only=offline,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.bin"],
            ))
        except Exception as exc:  # the hub client raises many kinds; all mean "not here"
            where = "in the local hub cache (HF_HUB_OFFLINE is set)" if offline else "on the hub"
            raise ConfigError(
                f"{self.option}: {self.spec}: no folder {repo!r} here and not found {where}: "
                f"{short(exc)}",
                option=self.option,
            ) from exc

    def __exit__(self, *exc: object) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
