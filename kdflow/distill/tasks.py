"""Tasks: what a model's output is, how teacher targets are cached and combined, and which
loss and metric apply. The loop holds a `Task` and never asks which one it has.

`classification` (class logits, N × C) is the first; a causal-LM task (per-token logits,
N × L × V, top-k caches, masked token-level KL) is the next implementation of the same
protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from kdflow.data.prepared import Split
from kdflow.distill.losses import kd_objective
from kdflow.distill.targets import Ensemble, Targets, teacher_parts
from kdflow.errors import ConfigError
from kdflow.models.inference import accuracy


@dataclass
class LossParts:
    """One step's loss by named part. `total` is what backpropagates; the parts are
    detached and unweighted, for the epoch's report.

    `soft` is the cross-entropy H(p_T, q) against the teachers' targets (the KL plus the
    teachers' entropy, which the loop subtracts for the report); `hard` is the label CE,
    None when it is only reported and the loop computes it for the whole epoch at once.
    """

    total: torch.Tensor
    hard: torch.Tensor | None
    soft: torch.Tensor
    feature: torch.Tensor | None = None
    attention: torch.Tensor | None = None


class Task(Protocol):
    name: str
    metric: str
    """The validation metric's name (higher is better)."""

    def cache_parts(self, logits: torch.Tensor, top_k: int) -> dict[str, torch.Tensor]:
        """A teacher's outputs as the cache stores them."""
        ...

    def targets(self, parts: list[dict[str, torch.Tensor]], ensemble: Ensemble) -> Targets:
        """The ensemble's soft targets of some rows from each teacher's cached parts."""
        ...

    def loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        soft: torch.Tensor | None,
        temperature: float,
        alpha: float,
    ) -> LossParts:
        """The distillation loss of one batch (hard labels alone when `soft` is None)."""
        ...

    def hard_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The label loss, for reporting (called once per epoch on every step's logits)."""
        ...

    def score(self, model: nn.Module, split: Split) -> float:
        """The validation metric of `model` on `split`."""
        ...


class Classification:
    """Class logits N × C; soft targets are the ensemble's softmax at T (`kdflow.distill.
    targets`); the loss is Hinton et al. 2015's, as `kd_objective` computes it; accuracy."""

    name = "classification"
    metric = "accuracy"

    def cache_parts(self, logits: torch.Tensor, top_k: int) -> dict[str, torch.Tensor]:
        return teacher_parts(logits, top_k)

    def targets(self, parts: list[dict[str, torch.Tensor]], ensemble: Ensemble) -> Targets:
        return ensemble.combine(parts)

    def loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        soft: torch.Tensor | None,
        temperature: float,
        alpha: float,
    ) -> LossParts:
        total, hard, soft_ce = kd_objective(
            logits, labels, soft, temperature, alpha, report_hard=False
        )
        return LossParts(total=total, hard=hard, soft=soft_ce)

    def hard_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)

    def score(self, model: nn.Module, split: Split) -> float:
        return accuracy(model, split)


TASKS: dict[str, Task] = {"classification": Classification()}


def task_named(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]
