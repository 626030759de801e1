"""Distil a teacher ensemble into a student with Ray Train, next to a no-distillation baseline.

Teacher logits are computed once over the training split and cached (offline KD); the
student's epochs then cost about what plain training costs. Training runs in Ray Train
(`TorchTrainer`): data-parallel over `workers`, a checkpoint every epoch (weights, optimizer,
scheduler) as safetensors + JSON, and `FailureConfig(max_failures)` so a
failed worker resumes from the last checkpoint. Runs are named after the pipeline run, so a
retried pipeline run resumes too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdflow.artifacts import (
    flatten_optimizer_state,
    load_model,
    load_tensors,
    save_model,
    save_tensors,
    unflatten_optimizer_state,
)
from kdflow.config import DistillConfig
from kdflow.data import read_meta, read_split
from kdflow.errors import KdflowError
from kdflow.losses import soft_targets
from kdflow.models import build_classifier, count_params, parse_spec
from kdflow.training import accuracy, make_loader, predict_logits, seed_everything, train_epoch

log = logging.getLogger(__name__)


@dataclass
class StudentResult:
    val_accuracy: float
    params: int
    epochs: int
    history: list[dict[str, float]]


def teacher_logits(
    dataset_dir: Path, teacher_dirs: list[Path], cache_dir: Path
) -> list[np.ndarray]:
    """Each teacher's logits over the training split, cached as float16.

    The cache key is the dataset hash and the teacher's weights hash, so a later run on the
    same data with the same teachers reuses it.
    """
    meta = read_meta(dataset_dir)
    train = read_split(dataset_dir, "train")
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for folder in teacher_dirs:
        model, spec = load_model(folder)
        if spec["n_features"] != meta.n_features or spec["n_classes"] != meta.n_classes:
            raise KdflowError(
                f"teacher {folder} expects {spec['n_features']} features and "
                f"{spec['n_classes']} classes; the data has {meta.n_features} and "
                f"{meta.n_classes}"
            )
        key = hashlib.sha256(f"{meta.sha256}:{spec['weights_sha256']}".encode()).hexdigest()
        path = cache_dir / f"logits-{key[:24]}.npy"
        if path.exists():
            log.info("teacher %s: cached logits %s", spec["model"], path)
        else:
            logits = predict_logits(model, train.x).numpy().astype(np.float16)
            np.save(path, logits)
        out.append(np.load(path).astype(np.float32))
    return out


def _build_role(cfg: dict[str, Any], meta: Any, x: torch.Tensor) -> dict[str, Any]:
    model = build_classifier(
        parse_spec(cfg["student"]), meta.input_shape, meta.n_classes, meta.n_features
    )
    model.set_normalisation(x.mean(0), x.std(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["epochs"])
    return {
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "best_acc": -1.0,
    }


def _train_worker(cfg: dict[str, Any]) -> None:
    """Ray Train per-worker loop; every rank runs it, rank 0 writes the checkpoints.

    It trains each role side by side, from the same initial weights and on the same
    batches: `student` on the KD loss against the cached soft targets, `baseline` on the
    hard labels alone. The comparison then isolates what distillation adds.
    """
    import ray.train
    import ray.train.torch
    from torch.utils.data import DistributedSampler

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    meta = read_meta(cfg["dataset_dir"])
    train, val = read_split(cfg["dataset_dir"], "train"), read_split(cfg["dataset_dir"], "val")
    soft = np.load(cfg["soft_path"]) if cfg["soft_path"] else None
    x = torch.from_numpy(train.x)
    roles: dict[str, dict[str, Any]] = {}
    for role in cfg["roles"]:
        # Same seed for every role and rank: identical initial weights (DDP broadcasts
        # rank 0's anyway), so baseline and student differ only by the loss.
        seed_everything(cfg["seed"])
        roles[role] = _build_role(cfg, meta, x)
    start, history = 1, []

    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        # Load before prepare_model: the DDP wrapper would prefix every key with "module.".
        with checkpoint.as_directory() as folder:
            tensors, state = load_tensors(Path(folder))
        for role, r in roles.items():
            r["model"].load_state_dict(_strip(tensors, f"{role}.model."))
            r["optimizer"].load_state_dict(
                unflatten_optimizer_state(_strip(tensors, f"{role}."), state[role]["optimizer"])
            )
            r["scheduler"].load_state_dict(state[role]["scheduler"])
            r["best_acc"] = state[role]["best_val_accuracy"]
        start, history = state["epoch"] + 1, state["history"]
        log.info("rank %d resumes at epoch %d", rank, start)

    device = ray.train.torch.get_device()
    for r in roles.values():
        r["model"] = ray.train.torch.prepare_model(r["model"])
        r["plain"] = getattr(r["model"], "module", r["model"])
    batch_size = max(1, cfg["batch_size"] // world)
    for epoch in range(start, cfg["epochs"] + 1):
        # Each role sees the same batches, and a resumed run the same order as an
        # undisturbed one: the order depends only on (seed, epoch).
        order_seed = cfg["seed"] * 100_003 + epoch
        stats: dict[str, Any] = {"epoch": epoch}
        for role, r in roles.items():
            loader = ray.train.torch.prepare_data_loader(
                make_loader(
                    train, batch_size, order_seed, soft=soft, pin_memory=device.type == "cuda"
                )
            )
            if isinstance(getattr(loader, "sampler", None), DistributedSampler):
                loader.sampler.set_epoch(order_seed)
            loss, hard, soft_part = train_epoch(
                r["model"],
                loader,
                r["optimizer"],
                device,
                cfg["temperature"],
                cfg["alpha"] if role == "student" else 1.0,
                use_soft=role == "student",
            )
            r["scheduler"].step()
            val_acc = accuracy(r["plain"], val)
            r["best_acc"] = max(r["best_acc"], val_acc)
            stats |= {
                f"{role}/loss": loss,
                f"{role}/hard_loss": hard,
                f"{role}/soft_loss": soft_part,
                f"{role}/val_accuracy": val_acc,
                f"{role}/best_val_accuracy": r["best_acc"],
            }
        history.append(stats)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                _save_checkpoint(Path(tmp), roles, epoch, history)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(stats, checkpoint=ckpt)
        if cfg.get("fail_at_epoch") == epoch and not checkpoint:
            # Fault-injection hook for the resume tests: die once, after this epoch's checkpoint.
            os._exit(1)


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _save_checkpoint(
    folder: Path, roles: dict[str, dict[str, Any]], epoch: int, history: list[dict[str, Any]]
) -> None:
    """Weights, optimizer and scheduler of every role, as safetensors + JSON."""
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, Any] = {"epoch": epoch, "history": history}
    for role, r in roles.items():
        opt_tensors, opt_meta = flatten_optimizer_state(r["optimizer"].state_dict())
        tensors |= {f"{role}.model.{k}": v for k, v in r["plain"].state_dict().items()}
        tensors |= {f"{role}.{k}": v for k, v in opt_tensors.items()}
        state[role] = {
            "optimizer": opt_meta,
            "scheduler": r["scheduler"].state_dict(),
            "best_val_accuracy": r["best_acc"],
        }
    save_tensors(tensors, state, folder)


def ensure_ray(num_cpus: int | None = None) -> None:
    """Start an in-process Ray unless one is running or RAY_ADDRESS points at a cluster."""
    import ray

    # Ray Train V2's controller collects each report on its health-check tick (2 s by
    # default): with a checkpoint every epoch that tick, not compute, paces small runs.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    # Socket paths must stay under 107 characters: keep Ray's temp dir short.
    temp = os.environ.get("KDFLOW_RAY_TMP") or tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(
        num_cpus=num_cpus or max(2, os.cpu_count() or 2),
        include_dashboard=False,
        _temp_dir=temp,
        log_to_driver=True,
        configure_logging=False,
    )


def train_students(
    dataset_dir: Path,
    cfg: DistillConfig,
    soft_path: Path,
    out_dirs: dict[str, Path],
    storage_path: Path | str,
    run_name: str,
    seed: int,
    fail_at_epoch: int | None = None,
) -> dict[str, StudentResult]:
    """One Ray Train run that trains the distilled student and the baseline side by side."""
    import ray.train
    from ray.train.torch import TorchTrainer

    use_gpu = torch.cuda.is_available()
    ensure_ray(num_cpus=max(cfg.workers, os.cpu_count() or 1))
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "dataset_dir": str(dataset_dir),
            "soft_path": str(soft_path),
            "roles": list(out_dirs),
            "student": cfg.student,
            "lr": cfg.student_lr,
            "epochs": cfg.student_epochs,
            "batch_size": cfg.student_batch_size,
            "temperature": cfg.temperature,
            "alpha": cfg.alpha,
            "seed": seed,
            "fail_at_epoch": fail_at_epoch,
        },
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(storage_path),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; say which run failed and why
        raise KdflowError(f"Ray Train run {run_name} failed: {exc}") from exc
    if result.checkpoint is None:
        raise KdflowError(f"Ray Train run {run_name} finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        tensors, state = load_tensors(Path(folder))
    meta = read_meta(dataset_dir)
    results = {}
    for role, out_dir in out_dirs.items():
        model = build_classifier(
            parse_spec(cfg.student), meta.input_shape, meta.n_classes, meta.n_features
        )
        # The last epoch, not the best validation epoch: the validation split is small
        # (~130 rows on digits) and picking on it adds noise that hides what KD buys.
        model.load_state_dict(_strip(tensors, f"{role}.model."))
        save_model(model, out_dir, meta.classes, meta.feature_columns, {"role": role})
        results[role] = StudentResult(
            val_accuracy=float(state["history"][-1][f"{role}/val_accuracy"]),
            params=count_params(model),
            epochs=int(state["epoch"]),
            history=[
                {k.split("/", 1)[1]: v for k, v in h.items() if k.startswith(role + "/")}
                | {"epoch": h["epoch"]}
                for h in state["history"]
            ],
        )
    return results


def distill(
    dataset_dir: Path,
    teacher_dirs: list[Path],
    cfg: DistillConfig,
    student_dir: Path,
    baseline_dir: Path,
    work_dir: Path,
    run_name: str,
    seed: int,
) -> dict[str, Any]:
    """Cache the teachers' soft targets, then train the distilled student and the baseline."""
    logits = teacher_logits(dataset_dir, teacher_dirs, work_dir / "cache")
    probs = soft_targets([torch.from_numpy(z) for z in logits], cfg.temperature)
    work_dir.mkdir(parents=True, exist_ok=True)
    soft_path = work_dir / f"soft-targets-{run_name}.npy"
    np.save(soft_path, probs.numpy().astype(np.float32))
    results = train_students(
        dataset_dir,
        cfg,
        soft_path,
        {"student": student_dir, "baseline": baseline_dir},
        work_dir / "ray",
        run_name,
        seed,
    )
    return {role: asdict(r) for role, r in results.items()}
