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
        weights if weights is not None else [1.0] * len(teacher_logits),
        dtype=probs.dtype,
        device=probs.device,
    )
    w = w / w.sum()
    return torch.einsum("k,knc->nc", w, probs)


def sparse_soft_targets(
    values: Sequence[torch.Tensor],
    indices: Sequence[torch.Tensor],
    temperature: float,
    mode: str = "mean_probs",
    weights: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ensemble soft targets from K teachers' top-k logits, kept sparse.

    Each teacher's distribution is approximated by its k largest logits v_k (classes i_k),
    renormalised over them; every other class gets probability 0:

        p̃_k(c) = exp(z_kc / T) / Σ_{c' ∈ i_k} exp(z_kc' / T)   for c ∈ i_k, else 0

    Every dropped class has a logit ≤ the k-th largest, so the mass the approximation moves
    onto the kept classes is at most (C − k) · p_k(k-th class): small when the teacher is
    confident or T is low, larger at high T on flat distributions. The ensemble is then
    mean_probs or weighted_probs as in `soft_targets` (mean_logits needs every logit).

    Returns N × (K·k) probabilities and their class indices; `densify` scatters them into
    N × C (a class kept by several teachers receives the sum of their shares).
    """
    if not values:
        raise ValueError("sparse_soft_targets needs at least one teacher")
    if mode not in ("mean_probs", "weighted_probs"):
        raise ValueError(
            f"ensemble mode {mode!r} needs full logits; use mean_probs or weighted_probs"
        )
    w = [1.0] * len(values) if weights is None or mode != "weighted_probs" else list(weights)
    total = sum(w)
    probs = [
        F.softmax(v.float() / temperature, dim=-1) * (w[k] / total) for k, v in enumerate(values)
    ]
    return torch.cat(probs, dim=-1), torch.cat([i.long() for i in indices], dim=-1)


def densify(probs: torch.Tensor, indices: torch.Tensor, n_classes: int) -> torch.Tensor:
    """N × C dense targets from sparse (probabilities, class indices) rows."""
    dense = torch.zeros(probs.shape[0], n_classes, dtype=torch.float32, device=probs.device)
    return dense.scatter_add_(1, indices.long(), probs.float())


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


def kd_objective(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_probs: torch.Tensor | None,
    temperature: float,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`kd_loss` minus a constant: the same gradient in fewer kernels, for the training loop.

        L' = α · CE(y, softmax(s)) + (1 − α) · T² · H(p_T, softmax(s / T))

    H(p, q) = −Σ p log q = KL(p ‖ q) + H(p), so L' = L + (1 − α) · T² · H(p_T); the teachers'
    entropy H(p_T) does not depend on the student, so ∇L' = ∇L. Leaving it out of the graph
    (and folding the weights into one scale and one add, and with α = 0 computing the
    reported CE without autograd) saves about half the loss's kernels per step, which is
    most of KD's cost for a small student on a CPU.

    Returns (L', CE part, H(p_T, q) part), the parts unweighted and detached; subtract the
    mean teacher entropy from the last to report the KL.
    """
    scale = (1.0 - alpha) * temperature**2
    if teacher_probs is None or scale == 0.0:
        hard = F.cross_entropy(student_logits, labels)
        return hard, hard.detach(), torch.zeros((), device=hard.device)
    log_q = F.log_softmax(
        student_logits if temperature == 1.0 else student_logits * (1.0 / temperature), dim=-1
    )
    weighted = (teacher_probs * log_q).sum() * (-scale / student_logits.shape[0])
    if alpha == 0.0:
        # Pure KD: the hard part is only reported, so keep it out of the graph.
        with torch.no_grad():
            hard = F.cross_entropy(student_logits, labels)
        return weighted, hard, weighted.detach() * (1.0 / scale)
    hard = F.cross_entropy(student_logits, labels)
    total = torch.add(weighted, hard, alpha=alpha)
    return total, hard.detach(), weighted.detach() * (1.0 / scale)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-row entropy H(p) = −Σ_c p_c log p_c (0 · log 0 = 0)."""
    return -torch.special.xlogy(probs, probs).sum(-1)
