"""The distill step's entry: the run in this process's Ray (or in this process), or as a
Ray job on a cluster, by `cfg.ray_address`; folders in, folders out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdflow.config import DistillConfig
from kdflow.distill.cluster import submit_distillation
from kdflow.distill.driver import run_distillation


def distill(
    dataset_dir: Path,
    teacher_dirs: list[Path],
    cfg: DistillConfig,
    student_dir: Path,
    baseline_dir: Path,
    work_dir: Path,
    run_name: str,
    seed: int,
    fail_at_epoch: int | None = None,
) -> dict[str, Any]:
    """Distil the teachers into `student_dir`, next to the baseline in `baseline_dir`.

    Checkpoints and the teacher cache go to `cfg.storage_path`, or to `work_dir` when it is
    not set (then nothing is shared between runs). `fail_at_epoch` is the resume tests' hook.
    """
    outputs = {"student": str(student_dir), "baseline": str(baseline_dir)}
    teachers = [str(t) for t in teacher_dirs]
    if cfg.ray_address:
        return submit_distillation(
            str(dataset_dir), teachers, cfg, outputs, run_name, seed, fail_at_epoch=fail_at_epoch
        )
    root = cfg.storage_path or str(work_dir)
    return run_distillation(
        str(dataset_dir), teachers, cfg, outputs, root, run_name, seed, fail_at_epoch
    )
