"""Where the loop runs: seeds, the process's CPU budget, the device, and the local Ray.

Everything here is about the process, not about distillation: how many threads a pod's CPU
limit allows, which device is there, and how an in-process Ray is started.
"""

from __future__ import annotations

import logging
import math
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def member_seed(seed: int, index: int) -> int:
    """The seed of ensemble member `index` in a run seeded `seed`.

    Member 0 keeps the run's seed (a one-teacher run is what it always was); the others get
    independent streams from numpy's SeedSequence, so `--teachers cnn cnn cnn` trains three
    different models, not one model three times.
    """
    if index == 0:
        return seed
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def cpu_budget(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup CPU quota.

    A Kubernetes CPU limit is a CFS quota, invisible to `os.cpu_count()` and to torch's
    default thread count: a pod limited to 2 CPUs on a 64-core node would otherwise run 64
    threads, or tell Ray it has 64 CPUs. cgroup v2 `cpu.max` ("200000 100000": 2 CPUs) or
    v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`; a fractional quota rounds up.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _cgroup_cpu_quota(root: Path) -> float | None:
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, _, period = v2.read_text().strip().partition(" ")
            return None if quota == "max" else int(quota) / int(period or 100_000)
        v1 = root / "cpu"
        if (v1 / "cpu.cfs_quota_us").is_file():
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
            return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):  # unreadable or unexpected: no quota known
        return None
    return None


def limit_threads() -> int:
    """Keep torch's intra-op threads within `cpu_budget()` (never raises the count)."""
    budget = cpu_budget()
    if torch.get_num_threads() > budget:
        log.info("torch threads %d -> %d (the CPU budget)", torch.get_num_threads(), budget)
        torch.set_num_threads(budget)
    return torch.get_num_threads()


def local_device() -> torch.device:
    """This process's device: CUDA when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def wants_gpus(mode: str, resources: dict[str, float]) -> bool:
    """Whether Ray work asks for a GPU each: `use_gpu` `on`, or `auto` and the cluster
    (`resources`, as `ray.cluster_resources()` gives them) has GPUs now."""
    if mode == "auto":
        return resources.get("GPU", 0) > 0
    return mode == "on"


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
        num_cpus=num_cpus or max(2, cpu_budget()),
        include_dashboard=False,
        _temp_dir=temp,
        log_to_driver=True,
        configure_logging=False,
    )
