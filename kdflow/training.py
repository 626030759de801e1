"""Single-process training and inference: teachers, and the loop the Ray workers share."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdflow.data import Split
from kdflow.losses import kd_loss

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
