"""The distill step's entry: the run in this process's Ray (or in this process), or as a
Ray job on a cluster, by `cfg.ray_address`; folders in, folders out."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from kdflow.config import DistillConfig
from kdflow.config.checks import CONFIG_MAP, in_a_pipeline_pod
from kdflow.distill.cluster import submit_distillation
from kdflow.distill.driver import run_distillation

log = logging.getLogger(__name__)

STORAGE_ENV = "KDFLOW_STORAGE_PATH"
"""The cluster's shared storage (an s3:// prefix) from the kdflow-config ConfigMap."""


def with_shared_storage(cfg: DistillConfig) -> DistillConfig:
    """`cfg` with --storage-path, else $KDFLOW_STORAGE_PATH (on a cluster: the kdflow-config
    ConfigMap's, so a KFP retry of the step resumes from the checkpoints the failed attempt
    left). A step in a pod with neither says at start that a retry will begin again."""
    if cfg.storage_path:
        return cfg
    if os.environ.get(STORAGE_ENV):
        return dataclasses.replace(cfg, storage_path=os.environ[STORAGE_ENV])
    if in_a_pipeline_pod():
        log.warning("no shared storage for checkpoints and the teacher cache (--storage-path, "
                    "or %s in the %s ConfigMap): a retry of this step will begin again",
                    STORAGE_ENV, CONFIG_MAP)
    return cfg


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
