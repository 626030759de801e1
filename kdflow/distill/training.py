"""Single-process training and inference: teachers, and the loop the Ray workers share."""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdflow.data.prepared import Split
from kdflow.distill.losses import kd_loss

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


def pick_device(use_gpu: bool | None) -> torch.device:
    if use_gpu is None:
        use_gpu = torch.cuda.is_available()
    return torch.device("cuda" if use_gpu else "cpu")


@dataclass
class EpochStats:
    epoch: int
    loss: float
    hard_loss: float
    soft_loss: float
    val_accuracy: float


@dataclass
class History:
    epochs: list[EpochStats] = field(default_factory=list)

    @property
    def best(self) -> EpochStats:
        return max(self.epochs, key=lambda e: (e.val_accuracy, -e.epoch))


def make_loader(
    split: Split,
    batch_size: int,
    seed: int,
    soft: np.ndarray | None = None,
    shuffle: bool = True,
    pin_memory: bool = False,
) -> DataLoader:
    tensors = [torch.from_numpy(split.x), torch.from_numpy(split.y)]
    if soft is not None:
        tensors.append(torch.from_numpy(soft.astype(np.float32)))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(*tensors),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        pin_memory=pin_memory,
    )


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    temperature: float = 1.0,
    alpha: float = 1.0,
    use_soft: bool = True,
) -> tuple[float, float, float]:
    """One pass over `loader`; batches carry (x, y) or (x, y, soft targets).

    With `use_soft=False` the soft targets are ignored (the no-distillation baseline).
    """
    model.train()
    totals = np.zeros(3)
    seen = 0
    autocast = device.type == "cuda"
    for batch in loader:
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        soft = batch[2].to(device, non_blocking=True) if use_soft and len(batch) > 2 else None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(x)
        loss, hard, soft_part = kd_loss(logits.float(), y, soft, temperature, alpha)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = len(y)
        totals += np.array([loss.item(), hard.item(), soft_part.item()]) * n
        seen += n
    return tuple(totals / max(seen, 1))  # type: ignore[return-value]


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    outs = [
        model(torch.from_numpy(x[i : i + batch_size]).to(device)).float().cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(model: nn.Module, split: Split) -> float:
    if len(split.y) == 0:
        return float("nan")
    preds = predict_logits(model, split.x).argmax(-1).numpy()
    return float((preds == split.y).mean())


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: torch.device | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> History:
    """Train with hard labels (a teacher), keeping the weights of the best validation epoch."""
    device = device or pick_device(None)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loader = make_loader(train, batch_size, seed, pin_memory=device.type == "cuda")
    history = History()
    best_state: dict[str, torch.Tensor] | None = None
    for epoch in range(1, epochs + 1):
        loss, hard, _ = train_epoch(model, loader, optimizer, device)
        scheduler.step()
        stats = EpochStats(epoch, loss, hard, 0.0, accuracy(model, val))
        history.epochs.append(stats)
        if history.best is stats:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if on_epoch:
            on_epoch(stats)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.cpu().eval()
    return history
