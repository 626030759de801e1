"""Model artifacts: a folder with `model.safetensors` and `spec.json`. No pickle, ever.

`spec.json` records the architecture, shapes, class names and the SHA-256 of the weights
file; loading rebuilds the architecture from the spec, checks the hash and loads the
tensors with safetensors, which cannot execute code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from kdflow import __version__
from kdflow.errors import ModelFormatError
from kdflow.models.zoo import Classifier, build_classifier, parse_spec

WEIGHTS = "model.safetensors"
SPEC = "spec.json"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(
    model: Classifier,
    folder: str | Path,
    class_names: list[str],
    feature_names: list[str],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the model's weights and spec into `folder` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    spec = {
        "format_version": FORMAT_VERSION,
        "kdflow_version": __version__,
        "model": model.spec.to_dict(),
        "input_shape": model.input_shape,
        "n_features": int(model.mean.numel()),
        "n_classes": model.n_classes,
        "class_names": [str(c) for c in class_names],
        "feature_names": list(feature_names),
        "weights_sha256": sha256_file(folder / WEIGHTS),
        **(extra or {}),
    }
    (folder / SPEC).write_text(json.dumps(spec, indent=2))
    return folder


def read_spec(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    if not (folder / SPEC).is_file():
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise ModelFormatError(
            f"{folder}: no {SPEC}; a kdflow model is a folder with {WEIGHTS} and {SPEC}"
            + (f" (found: {', '.join(found)})" if found else "")
        )
    try:
        spec = json.loads((folder / SPEC).read_text())
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{folder / SPEC}: not valid JSON: {exc}") from exc
    missing = {"model", "input_shape", "n_features", "n_classes", "weights_sha256"} - set(spec)
    if missing:
        raise ModelFormatError(f"{folder / SPEC}: missing keys {', '.join(sorted(missing))}")
    return spec


def load_model(folder: str | Path) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild a model from its spec and load its weights, refusing anything tampered."""
    folder = Path(folder)
    spec = read_spec(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ModelFormatError(f"{folder}: no {WEIGHTS}")
    if sha256_file(weights) != spec["weights_sha256"]:
        raise ModelFormatError(
            f"{weights}: SHA-256 does not match {SPEC}; the weights were modified after saving"
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFormatError(f"{weights}: not a safetensors file ({exc})") from exc
    model = build_classifier(
        parse_spec(spec["model"], option=str(folder)),
        spec["input_shape"],
        int(spec["n_classes"]),
        int(spec["n_features"]),
    )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFormatError(f"{weights}: tensors do not fit the spec's architecture") from exc
    model.eval()
    return model, spec


def save_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any], folder: Path) -> None:
    """Checkpoint helper: tensors as safetensors, everything else as JSON. Tensors that share
    memory (a language model's output embeddings tied to its input embeddings) are stored
    once each under every name, as copies: safetensors refuses shared storage, and loading
    the copies back into tied parameters writes the same values twice."""
    folder.mkdir(parents=True, exist_ok=True)
    seen: set[tuple[int, object]] = set()
    out: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        t = v.detach().cpu().contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        out[k] = t.clone() if key in seen else t
        seen.add(key)
    save_file(out, str(folder / "state.safetensors"))
    (folder / "state.json").write_text(json.dumps(meta))


def load_tensors(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return load_file(str(folder / "state.safetensors")), json.loads(
        (folder / "state.json").read_text()
    )


def flatten_optimizer_state(
    state: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors (for safetensors) and JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, entry in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}
