"""Distillation losses. Each docstring gives the formula and the paper it comes from."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

ENSEMBLE_MODES = ("mean_probs", "weighted_probs", "mean_logits")


def soft_targets(
    teacher_logits: Sequence[torch.Tensor],
    temperature: float,
    mode: str = "mean_probs",
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Ensemble soft targets from K teachers' logits z_k at temperature T.

    mean_probs (default):  p = 1/K · Σ_k softmax(z_k / T)
    weighted_probs:         p = Σ_k w_k · softmax(z_k / T),  w normalised to sum 1
                            (e.g. w_k = teacher k's validation accuracy)
    mean_logits:            p = softmax((1/K · Σ_k z_k) / T)

    Averaging probabilities is the ensemble of Hinton et al. 2015, "Distilling the Knowledge
    in a Neural Network", §2; averaging logits is its geometric-mean variant.
    """
    if not teacher_logits:
        raise ValueError("soft_targets needs at least one teacher")
    if mode not in ENSEMBLE_MODES:
        raise ValueError(f"unknown ensemble mode {mode!r}; known: {', '.join(ENSEMBLE_MODES)}")
    stacked = torch.stack([z.float() for z in teacher_logits])  # K × N × C
    if mode == "mean_logits":
        return F.softmax(stacked.mean(0) / temperature, dim=-1)
    probs = F.softmax(stacked / temperature, dim=-1)
    if mode == "mean_probs":
        return probs.mean(0)
    w = torch.tensor(
        weights if weights is not None else [1.0] * len(teacher_logits), dtype=probs.dtype
    )
    w = w / w.sum()
    return torch.einsum("k,knc->nc", w, probs)


def kd_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_probs: torch.Tensor | None,
    temperature: float,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hinton et al. 2015 knowledge-distillation loss.

        L = α · CE(y, softmax(s)) + (1 − α) · T² · KL(p_T ‖ softmax(s / T))

    s are the student's logits, y the hard labels, p_T the teachers' soft targets at
    temperature T. The T² factor keeps the soft term's gradient magnitude independent of T
    (the paper's §2). KL is averaged over the batch (`batchmean`, the true KL per sample).
    With `teacher_probs=None` (the no-distillation baseline) L is plain cross-entropy.

    Returns (total, hard part, soft part), the parts unweighted, for logging.
    """
    hard = F.cross_entropy(student_logits, labels)
    if teacher_probs is None:
        return hard, hard.detach(), torch.zeros((), device=hard.device)
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    soft = F.kl_div(log_q, teacher_probs, reduction="batchmean")
    total = alpha * hard + (1.0 - alpha) * temperature**2 * soft
    return total, hard.detach(), soft.detach()
