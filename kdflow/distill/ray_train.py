"""The loop under Ray Train V2: `TorchTrainer` with a checkpoint every epoch, resumed after a
worker's failure (`FailureConfig`) or a rerun of the same run name.

Runs are named after the pipeline run, so a retried pipeline run resumes too. With
`workers=0` the same loop runs in this process through Ray Train's local mode (no Ray
start, no worker processes); it then writes its checkpoints itself, to the same place and
in the same format (`kdflow.distill.checkpoints`). The worker receives the `WorkerJob` as
itself: the typed settings cross the Ray boundary unchanged.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdflow.data import storage
from kdflow.data.sources import open_source
from kdflow.distill.checkpoints import (
    die_once_checkpointed,
    latest_in_process,
    persist_in_process,
    save_checkpoint,
    strip,
)
from kdflow.distill.loop import WorkerJob, role_history, train
from kdflow.distill.runtime import limit_threads, local_device, wants_gpus
from kdflow.distill.step import Role
from kdflow.errors import KdflowError
from kdflow.models.artifacts import load_tensors
from kdflow.models.sources import build, source_for
from kdflow.models.zoo import count_params

log = logging.getLogger(__name__)


@dataclass
class StudentResult:
    val_accuracy: float
    params: int
    epochs: int
    history: list[dict[str, float]]
    tokenize_seconds: float = 0.0
    """Time the loop spent tokenizing its rows (text; 0 when cached or numeric)."""


class RayTrainReporter:
    """The loop's reporter inside a Ray Train worker (or Ray Train's local mode)."""

    def __init__(self, job: WorkerJob) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.job = job
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        if job.in_process:
            # No worker whose resources Ray assigned: the process's own device, and
            # threads within the process's CPU budget (a pod's CPU limit).
            limit_threads()
            self.device = local_device()
        else:
            self.device = ray.train.torch.get_device()
        self.reported = False
        self.checkpoint = ray.train.get_checkpoint() or (
            latest_in_process(job.run_dir) if job.in_process else None
        )

    def resume(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        if self.checkpoint is None:
            return None
        with self.checkpoint.as_directory() as folder:
            return load_tensors(Path(folder))

    def prepare(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        # One process needs no DDP wrapper, only the device.
        return (
            model.to(self.device) if self.job.in_process else ray.train.torch.prepare_model(model)
        )

    def report(
        self, stats: dict[str, Any], roles: list[Role], epoch: int, history: list[dict[str, Any]]
    ) -> None:
        import ray.train

        job = self.job
        self.reported = True
        if job.in_process:
            ray.train.report(
                stats, checkpoint=persist_in_process(job.run_dir, roles, epoch, history)
            )
        else:
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if self.rank == 0:
                    save_checkpoint(Path(tmp), roles, epoch, history)
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(stats, checkpoint=ckpt)
        if job.fail_at_epoch == epoch and self.checkpoint is None:
            if job.in_process:
                raise KdflowError(f"fault injected after epoch {epoch} (test hook)")
            die_once_checkpointed(job.run_dir, epoch)


def _train_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker entry: every rank runs the loop, rank 0 writes checkpoints."""
    import ray.train

    job: WorkerJob = config["job"]
    reporter = RayTrainReporter(job)
    _, history = train(job, reporter)
    if job.in_process and reporter.checkpoint is not None and not reporter.reported:
        # A rerun of a finished run: nothing left to train, hand back its last checkpoint.
        ray.train.report(history[-1], checkpoint=reporter.checkpoint)


def train_students(
    job: WorkerJob, outputs: dict[str, str], run_name: str, storage_root: str
) -> dict[str, StudentResult]:
    """One Ray Train run of the roles in `outputs` (role -> the folder or s3:// prefix it is
    saved to), side by side; each role's last epoch is saved."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = job.cfg
    use_gpu = not job.in_process and wants_gpus(cfg.use_gpu, ray.cluster_resources())
    storage_path, filesystem = storage.ray_storage(storage.join(storage_root, "ray"))
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"job": job},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
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
    meta = open_source(job.dataset).meta
    source = source_for(cfg.student)
    results = {}
    with storage.optional_local_dir(job.template) as template_dir:
        for role, out in outputs.items():
            model = build(cfg.student, meta, template=template_dir)
            # The last epoch, not the best validation epoch: the validation split is small
            # (~130 rows on digits) and picking on it adds noise that hides what KD buys.
            model.load_state_dict(strip(tensors, f"{role}.model."))
            model.eval()
            with storage.writing_dir(out) as folder:
                source.save(model, folder, meta, {"role": role})
            results[role] = StudentResult(
                val_accuracy=float(state["history"][-1][f"{role}/val_accuracy"]),
                params=count_params(model),
                epochs=int(state["epoch"]),
                history=role_history(state["history"], role),
                tokenize_seconds=float(state["history"][0].get("tokenize_seconds", 0.0)),
            )
    return results
