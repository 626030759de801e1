"""Tasks: what a model's output is, how teacher targets are cached and combined, and which
loss and metric apply. The loop holds a `Task` and never asks which one it has.

`classification` (class logits, N × C) and `causal-lm` (per-token logits over a
vocabulary, top-k caches, masked token-level KL; `kdflow.distill.lm_task`) implement it.
The task follows from the prepared data (`task_for`): a corpus is causal-lm.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from kdflow.config import TASKS, DistillConfig
from kdflow.data.inputs import STREAM_ROWS
from kdflow.data.prepared import DatasetMeta, Split
from kdflow.distill.losses import LossParts, kd_objective
from kdflow.distill.targets import Ensemble, SoftTargets, teacher_parts
from kdflow.errors import ConfigError
from kdflow.models.inference import accuracy


class Task(Protocol):
    name: str
    metric: str
    """The validation metric's name (higher is better)."""
    stream_rows: int
    """Rows per block when a split streams through the teachers (bounded memory)."""
    predict_rows: int
    """Rows per forward pass of a teacher's inference."""

    def cache_parts(self, logits: torch.Tensor, top_k: int) -> dict[str, torch.Tensor]:
        """A teacher's outputs as the cache stores them."""
        ...

    def teacher_parts(self, model: nn.Module, x: torch.Tensor, top_k: int
                      ) -> dict[str, torch.Tensor]:
        """`cache_parts` of a teacher's outputs on `x` (no grad is the caller's)."""
        ...

    def targets(self, parts: list[dict[str, torch.Tensor]], ensemble: Ensemble) -> SoftTargets:
        """The ensemble's soft targets of some rows from each teacher's cached parts."""
        ...

    def loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        soft: torch.Tensor | None,
        temperature: float,
        alpha: float,
        model: nn.Module | None = None,
    ) -> LossParts:
        """The distillation loss of one batch (hard labels alone when `soft` is None);
        `model` is the unwrapped model whose outputs these are (causal LMs: its head)."""
        ...

    def hard_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The label loss of one step's logits, for reporting (pure KD trains without it)."""
        ...

    def score(self, model: nn.Module, split: Split) -> float:
        """The validation metric of `model` on `split`."""
        ...


class Classification:
    """Class logits N × C; soft targets are the ensemble's softmax at T (`kdflow.distill.
    targets`); the loss is Hinton et al. 2015's, as `kd_objective` computes it; accuracy."""

    name = "classification"
    metric = "accuracy"
    stream_rows = STREAM_ROWS
    predict_rows = 1024

    def cache_parts(self, logits: torch.Tensor, top_k: int) -> dict[str, torch.Tensor]:
        return teacher_parts(logits, top_k)

    def teacher_parts(self, model: nn.Module, x: torch.Tensor, top_k: int
                      ) -> dict[str, torch.Tensor]:
        return teacher_parts(model(x).float(), top_k)

    def targets(self, parts: list[dict[str, torch.Tensor]], ensemble: Ensemble) -> SoftTargets:
        return ensemble.combine(parts)

    def loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        soft: torch.Tensor | None,
        temperature: float,
        alpha: float,
        model: nn.Module | None = None,
    ) -> LossParts:
        total, hard, soft_ce = kd_objective(
            logits, labels, soft, temperature, alpha, report_hard=False
        )
        return LossParts(total=total, hard=hard, soft=soft_ce)

    def hard_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)

    def score(self, model: nn.Module, split: Split) -> float:
        return accuracy(model, split)


def task_named(name: str, cfg: DistillConfig | None = None) -> Task:
    """The task `name`, with the run's loss settings where it has any (causal-lm)."""
    if name == "classification":
        return Classification()
    if name == "causal-lm":
        from kdflow.distill.lm_task import CausalLM

        cfg = cfg or DistillConfig()
        return CausalLM(cfg.kd_loss, cfg.jsd_beta, cfg.temperature)
    raise ConfigError(f"unknown task {name!r}; known: {', '.join(TASKS)}")


def task_for(meta: DatasetMeta) -> str:
    """The task of a prepared dataset: causal-lm for a corpus, else classification."""
    return "causal-lm" if meta.kind == "corpus" else "classification"
