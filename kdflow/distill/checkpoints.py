"""Checkpoints of the loop: every role's weights, optimizer and schedule, the epoch, the
history and the RNG, as safetensors + JSON (never a pickle).

Under Ray Train workers the controller stores what rank 0 reports. In-process (`workers=0`)
Ray Train's local mode keeps only a reference to a reported checkpoint, so the loop writes
the folder itself, where Ray Train would, with a pointer to the latest; a rerun of the same
run name resumes from it.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdflow.data import storage
from kdflow.distill.sharding import load_optimizer
from kdflow.distill.step import Role
from kdflow.models.artifacts import (
    flatten_optimizer_state,
    save_tensors,
    unflatten_optimizer_state,
)

log = logging.getLogger(__name__)


IN_PROCESS_LATEST = "in_process_latest.json"
"""Under a run's folder: which checkpoint of an in-process run is the latest (written last)."""


def persist_in_process(
    run_dir: str, roles: list[Role], epoch: int, history: list[dict[str, Any]]
) -> Any:
    """An in-process run's checkpoint, written where Ray Train would write it.

    Ray Train's local mode keeps only a reference to what is reported, so the loop writes
    the folder itself (local or S3), then the pointer to it, then drops the checkpoint two
    epochs back: a crash at any point leaves a complete latest checkpoint to resume from.
    """
    folder = storage.join(run_dir, f"checkpoint_epoch_{epoch:06d}")
    with storage.writing_dir(folder) as local:
        save_checkpoint(local, roles, epoch, history)
    storage.write_json(
        storage.join(run_dir, IN_PROCESS_LATEST),
        {"epoch": epoch, "path": folder, "metrics": history[-1]},
    )
    if epoch > 2:  # deleting what is not there is a no-op
        storage.delete(storage.join(run_dir, f"checkpoint_epoch_{epoch - 2:06d}"))
    return checkpoint_at(folder)


def latest_in_process(run_dir: str) -> Any:
    """The checkpoint an in-process run of this name left, or None."""
    pointer = storage.join(run_dir, IN_PROCESS_LATEST)
    if not storage.exists(pointer):
        return None
    latest = storage.read_json(pointer)
    log.info("resuming the in-process run from epoch %d: %s", latest["epoch"], latest["path"])
    return checkpoint_at(latest["path"])


def checkpoint_at(uri: str) -> Any:
    """A Ray Train `Checkpoint` for a folder or s3:// prefix."""
    import ray.train

    path, fs = storage.ray_storage(uri)
    return ray.train.Checkpoint(path, filesystem=fs)


def die_once_checkpointed(run_dir: str, epoch: int, timeout_s: float = 60.0) -> None:
    """Fault injection for the resume tests: kill this worker process once the controller
    has recorded this epoch's checkpoint (it collects reports on its health-check tick, so
    dying right after `report` could lose the checkpoint and retrain the epoch)."""
    snapshot = storage.join(run_dir, "checkpoint_manager_snapshot.json")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if storage.exists(snapshot):
            latest = storage.read_json(snapshot).get("latest_checkpoint_result") or {}
            if latest.get("metrics", {}).get("epoch") == epoch:
                break
        time.sleep(0.1)
    os._exit(1)


def strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch, CUDA, numpy and Python RNG states, as tensors plus JSON.

    Every rank seeds identically and draws the same amounts, so rank 0's state is every
    rank's; dropout is the only consumer in the loop (batch order has its own generator).
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    tensors = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.asarray(keys).astype(np.int64)),
    }
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    version, internal, python_gauss = random.getstate()
    meta = {
        "numpy": [kind, int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), python_gauss],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, python_gauss = meta["python"]
    random.setstate((version, tuple(internal), python_gauss))


def save_checkpoint(
    folder: Path, roles: list[Role], epoch: int, history: list[dict[str, Any]]
) -> None:
    """Weights, optimizer, scheduler of every role, epoch and RNG, as safetensors + JSON."""
    rng_tensors, rng_meta = rng_state()
    tensors: dict[str, torch.Tensor] = {f"rng.{k}": v for k, v in rng_tensors.items()}
    state: dict[str, Any] = {"epoch": epoch, "history": history, "rng": rng_meta}
    for r in roles:
        if r.sharded is not None:  # FSDP: the full state gathered this epoch (rank 0)
            weights, aux, optimizer = r.sharded.weights, r.sharded.aux, r.sharded.optimizer
        else:
            weights, optimizer = r.classifier.state_dict(), r.optimizer.state_dict()
            aux = r.aux.state_dict() if r.aux is not None else {}
        opt_tensors, opt_meta = flatten_optimizer_state(optimizer)
        tensors |= {f"{r.name}.model.{k}": v for k, v in weights.items()}
        tensors |= {f"{r.name}.aux.{k}": v for k, v in aux.items()}
        if r.best_state is not None:
            tensors |= {f"{r.name}.best.{k}": v for k, v in r.best_state.items()}
        tensors |= {f"{r.name}.{k}": v for k, v in opt_tensors.items()}
        state[r.name] = {
            "optimizer": opt_meta,
            "scheduler": r.scheduler.state_dict(),
            "best_val_accuracy": r.best_acc,
        }
    save_tensors(tensors, state, folder)


def restore_weights(roles: list[Role], tensors: dict[str, torch.Tensor]) -> None:
    """Each role's weights (and hint projections) from a checkpoint. Before `prepare_model`:
    the DDP wrapper would prefix every key with "module."."""
    for r in roles:
        r.classifier.load_state_dict(strip(tensors, f"{r.name}.model."))
        if r.aux is not None:
            r.aux.load_state_dict(strip(tensors, f"{r.name}.aux."))
        best = strip(tensors, f"{r.name}.best.")
        r.best_state = best or None


def restore_training(
    roles: list[Role], tensors: dict[str, torch.Tensor], state: dict[str, Any]
) -> None:
    """Optimizers, schedules, best scores and the RNG from a checkpoint. After
    `prepare_model`: Adam's moments follow the parameters' device."""
    for r in roles:
        optimizer = unflatten_optimizer_state(strip(tensors, f"{r.name}."),
                                              state[r.name]["optimizer"])
        if r.sharded is not None:  # FSDP: each rank takes its slice (every rank calls it)
            load_optimizer(r, optimizer)
        else:
            r.optimizer.load_state_dict(optimizer)
        r.scheduler.load_state_dict(state[r.name]["scheduler"])
        r.best_acc = state[r.name]["best_val_accuracy"]
    set_rng_state(strip(tensors, "rng."), state["rng"])
