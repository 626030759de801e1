"""Teacher targets of classification: each teacher's logits as the cache keeps them, and
the ensemble's soft targets at temperature T (dense, or sparse from top-k logits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from kdflow.config import DistillConfig
from kdflow.data.sources import STREAM_ROWS
from kdflow.distill.losses import densify, entropy, soft_targets, sparse_soft_targets


@dataclass(frozen=True)
class Ensemble:
    """How the teachers' logits combine into one run's soft targets. Derived by the driver
    from the DistillConfig and the teachers' validation accuracies, never a default."""

    n_classes: int
    temperature: float
    mode: str
    weights: tuple[float, ...]
    top_k: int
    separate: bool

    @classmethod
    def of(cls, cfg: DistillConfig, n_classes: int, weights: list[float], top_k: int) -> Ensemble:
        return cls(
            n_classes,
            cfg.temperature,
            cfg.ensemble,
            tuple(weights),
            top_k,
            cfg.multi_teacher == "separate",
        )

    def combine(self, parts: list[dict[str, torch.Tensor]]) -> Targets:
        """The soft targets of some rows from each teacher's cached (or fresh) parts."""
        return ensemble_targets(
            parts, self.n_classes, self.temperature, self.mode, list(self.weights), self.separate
        )


def teacher_parts(logits: torch.Tensor, top_k: int) -> dict[str, torch.Tensor]:
    """A teacher's logits as the cache stores them: float16, in full or its top-k."""
    z = logits.half()
    if not top_k:
        return {"train": z}
    values, indices = z.float().topk(top_k, dim=-1)
    dtype = torch.int16 if logits.shape[-1] <= torch.iinfo(torch.int16).max else torch.int32
    return {"train_values": values.half(), "train_indices": indices.to(dtype)}


class SoftTargets(Protocol):
    """What the loop needs of a task's soft targets: rows by index, and each row's
    entropy where the task reports the KL as a cross-entropy less it (None otherwise)."""

    entropy: torch.Tensor | None

    def rows(self, index: torch.Tensor | None = None) -> torch.Tensor: ...


@dataclass
class Targets:
    """Ensemble soft targets of some rows: dense N × C, or sparse (probabilities, classes).

    `entropy` holds each row's H(p_T): the loop trains on the cross-entropy H(p_T, q) and
    subtracts it to report the KL.
    """

    n_classes: int
    dense: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    classes: torch.Tensor | None = None
    entropy: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.entropy is None and self.dense is not None:
            self.entropy = entropy(self.dense)
        elif self.entropy is None:
            assert self.probs is not None
            n = len(self.probs)
            blocks = [
                entropy(self.rows(torch.arange(i, min(i + STREAM_ROWS, n))))
                for i in range(0, n, STREAM_ROWS)
            ]
            self.entropy = torch.cat(blocks) if blocks else torch.zeros(0)

    def rows(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """Dense float32 targets of the rows `index` (all rows when None)."""
        if self.dense is not None:
            return self.dense if index is None else self.dense[index]
        assert self.probs is not None and self.classes is not None
        probs = self.probs if index is None else self.probs[index]
        classes = self.classes if index is None else self.classes[index]
        return densify(probs, classes, self.n_classes)

    @property
    def nbytes(self) -> int:
        parts = (self.dense, self.probs, self.classes, self.entropy)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)


def ensemble_targets(
    parts: list[dict[str, torch.Tensor]],
    n_classes: int,
    temperature: float,
    mode: str,
    weights: list[float],
    separate: bool = False,
) -> Targets:
    """The ensemble's soft targets from each teacher's (cached or fresh) float16 logits.

    `separate` (multi_teacher="separate") keeps the same targets but sets each row's
    `entropy` to Σ_k w_k H(p_k): the loop then reports Σ_k w_k KL(p_k ‖ q), the per-teacher
    loss, whose gradient is that of KL(p̄ ‖ q) (`kdflow.distill.losses.separate_kd_loss`).
    """
    if "train" in parts[0]:
        logits = [p["train"] for p in parts]
        targets = Targets(n_classes, dense=soft_targets(logits, temperature, mode, weights))
    else:
        probs, classes = sparse_soft_targets(
            [p["train_values"] for p in parts],
            [p["train_indices"] for p in parts],
            temperature,
            mode,
            weights,
        )
        targets = Targets(
            n_classes, probs=probs, classes=classes.to(parts[0]["train_indices"].dtype)
        )
    if separate and len(parts) > 1:
        w = torch.tensor(weights if mode == "weighted_probs" else [1.0] * len(parts))
        each = [
            ensemble_targets([p], n_classes, temperature, "mean_probs", [1.0]).entropy
            for p in parts
        ]
        targets.entropy = torch.einsum(
            "k,kn->n", w / w.sum(), torch.stack([e for e in each if e is not None])
        )
    return targets


def ensemble_report(
    val_logits: list[np.ndarray], val_y: np.ndarray, cfg: DistillConfig
) -> dict[str, Any]:
    """Each teacher's validation accuracy, ensemble weight, and agreement with the ensemble.

    Weights are `teacher_weights` when given, else the validation accuracies (normalised)
    for `weighted_probs`, uniform otherwise. Agreement is the share of validation rows
    where a teacher's top class is the ensemble's.
    """
    logits = [torch.from_numpy(z.astype(np.float32)) for z in val_logits]
    accs = [float((z.argmax(-1).numpy() == val_y).mean()) if len(val_y) else 0.0 for z in logits]
    if cfg.teacher_weights:
        weights = [w / sum(cfg.teacher_weights) for w in cfg.teacher_weights]
    elif cfg.ensemble == "weighted_probs" and sum(accs) > 0:
        weights = [a / sum(accs) for a in accs]
    else:
        weights = [1.0 / len(val_logits)] * len(val_logits)
    ensemble = soft_targets(logits, cfg.temperature, cfg.ensemble, weights).argmax(-1)
    agreement = [float((z.argmax(-1) == ensemble).float().mean()) for z in logits]
    return {
        "mode": cfg.ensemble,
        "weights": weights,
        "teacher_val_accuracy": accs,
        "agreement": agreement,
        "val_accuracy": float((ensemble.numpy() == val_y).mean()) if len(val_y) else 0.0,
    }
