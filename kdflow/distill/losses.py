"""Distillation losses. Each docstring gives the formula and the paper it comes from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ENSEMBLE_MODES = ("mean_probs", "weighted_probs", "mean_logits")


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
    report_hard: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """`kd_loss` minus a constant: the same gradient in fewer kernels, for the training loop.

        L' = α · CE(y, softmax(s)) + (1 − α) · T² · H(p_T, softmax(s / T))

    H(p, q) = −Σ p log q = KL(p ‖ q) + H(p), so L' = L + (1 − α) · T² · H(p_T); the teachers'
    entropy H(p_T) does not depend on the student, so ∇L' = ∇L. Leaving it out of the graph
    (and folding the weights into one scale and one add, and with α = 0 computing the
    reported CE without autograd) saves about half the loss's kernels per step, which is
    most of KD's cost for a small student on a CPU.

    Returns (L', CE part, H(p_T, q) part), the parts unweighted and detached; subtract the
    mean teacher entropy from the last to report the KL. With `report_hard=False` and α = 0
    the CE part, which only gets reported, is not computed (None): the training loop then
    computes it for the whole epoch at once, one kernel instead of one per step.
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
        if not report_hard:
            return weighted, None, weighted.detach() * (1.0 / scale)
        with torch.no_grad():
            hard = F.cross_entropy(student_logits, labels)
        return weighted, hard, weighted.detach() * (1.0 / scale)
    hard = F.cross_entropy(student_logits, labels)
    total = torch.add(weighted, hard, alpha=alpha)
    return total, hard.detach(), weighted.detach() * (1.0 / scale)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-row entropy H(p) = −Σ_c p_c log p_c (0 · log 0 = 0)."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def separate_kd_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_probs: Sequence[torch.Tensor],
    temperature: float,
    alpha: float,
    weights: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multi-teacher KD with one KL term per teacher, weighted and summed.

        L = α · CE(y, softmax(s)) + (1 − α) · T² · Σ_k w_k · KL(p_k ‖ softmax(s / T))

    p_k is teacher k's softmax at T, w_k ≥ 0 its weight, normalised to sum to 1 (uniform
    by default). This is the per-teacher loss of You et al. 2017, "Learning from Multiple
    Teacher Networks" (KDD), and of Fukuda et al. 2017 (Interspeech); `kd_loss` against
    `soft_targets(mode="weighted_probs")` is the averaged-distribution alternative.

    Because KL(p ‖ q) = H(p, q) − H(p) and H(·, q) is linear in p,
        Σ_k w_k KL(p_k ‖ q) = KL(p̄ ‖ q) + [H(p̄) − Σ_k w_k H(p_k)],   p̄ = Σ_k w_k p_k,
    so the two differ by a term that does not depend on the student: the same gradient, a
    larger reported loss (by the teachers' disagreement, a generalised Jensen–Shannon
    divergence). They differ in training only against `mean_logits` targets.

    Returns (total, hard part, Σ_k w_k KL part), the parts unweighted, for logging.
    """
    if not teacher_probs:
        raise ValueError("separate_kd_loss needs at least one teacher")
    w = torch.tensor(
        list(weights) if weights is not None else [1.0] * len(teacher_probs),
        dtype=torch.float32,
        device=student_logits.device,
    )
    if len(w) != len(teacher_probs):
        raise ValueError(f"{len(w)} weights for {len(teacher_probs)} teachers")
    w = w / w.sum()
    hard = F.cross_entropy(student_logits, labels)
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    soft = sum(
        w[k] * F.kl_div(log_q, p, reduction="batchmean") for k, p in enumerate(teacher_probs)
    )
    assert isinstance(soft, torch.Tensor)
    total = alpha * hard + (1.0 - alpha) * temperature**2 * soft
    return total, hard.detach(), soft.detach()


def hint_loss(
    student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]
) -> torch.Tensor:
    """FitNets hint loss, averaged over the (teacher layer, student layer) pairs.

        L_hint = 1/P · Σ_pairs mean_elements (u_T(x) − r(v_S(x)))²

    u_T is the teacher's hint layer, v_S the student's guided layer and r the learned
    regressor that maps the student's features to the teacher's shape (the caller applies
    it: `student_features` are r(v_S)). Romero et al. 2015, "FitNets: Hints for Thin Deep
    Nets" (ICLR), eq. 3 writes ½‖u_T − r(v_S)‖²; the mean over elements instead of the
    halved sum keeps the weight comparable across layer sizes. The teacher side carries no
    gradient.
    """
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError(
            f"hint_loss needs matching non-empty pairs, got {len(student_features)} "
            f"student and {len(teacher_features)} teacher features"
        )
    losses = [
        F.mse_loss(s.float(), t.detach().float())
        for s, t in zip(student_features, teacher_features, strict=True)
    ]
    return torch.stack(losses).mean()


def cosine_hidden_loss(
    student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]
) -> torch.Tensor:
    """DistilBERT's cosine embedding loss on hidden states, averaged over pairs and tokens:

        L_cos = 1/P · Σ_pairs mean_{b,i} (1 − cos(h_S[b,i,:], h_T[b,i,:]))

    Sanh et al. 2019, "DistilBERT, a distilled version of BERT" (NeurIPS EMC² workshop),
    §3: it "aligns the directions of the student and teacher hidden states vectors". Each
    pair is B × L × D (or B × D) on both sides, the student's already projected to the
    teacher's width where they differ; the teacher side carries no gradient.
    """
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError("cosine_hidden_loss needs matching non-empty pairs")
    losses = [
        (1.0 - F.cosine_similarity(s.float(), t.detach().float(), dim=-1)).mean()
        for s, t in zip(student_features, teacher_features, strict=True)
    ]
    return torch.stack(losses).mean()


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer (0-based) each student layer learns from: the uniform strategy of
    TinyBERT (Jiao et al. 2020, §3.3), student layer m ↔ teacher layer g(m) = m · N / M
    (1-based, M student and N teacher layers), so the last layers always pair."""
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError("layer_map needs at least one layer on each side")
    return [
        max(0, round((m + 1) * teacher_layers / student_layers) - 1) for m in range(student_layers)
    ]


def merge_heads(maps: torch.Tensor, heads: int) -> torch.Tensor:
    """B × H × L × L attention maps reduced to `heads` heads by averaging groups of H/heads
    consecutive heads (an average of attention distributions is one); when `heads` does not
    divide H, every head is averaged into one."""
    total = maps.shape[1]
    if heads == total:
        return maps
    if total % heads:
        return maps.mean(1, keepdim=True)
    return maps.reshape(maps.shape[0], heads, total // heads, *maps.shape[2:]).mean(2)


def attention_loss(
    student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Attention-map distillation (MiniLM's attention-distribution transfer), averaged over
    layer pairs, heads, queries and the batch:

        L_AT = 1/(P·B·H·L) · Σ_pairs Σ_b,h,i KL(A_T[b,h,i,:] ‖ A_S[b,h,i,:])

    A[b,h,i,:] is head h's attention distribution of query token i (a softmax row). Wang et
    al. 2020, "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
    Pre-Trained Transformers" (NeurIPS), eq. 5-6, on the last layer; TinyBERT (Jiao et al.
    2020) distils every layer through a layer mapping (`layer_map`). When the head counts
    differ, both sides are first reduced to the smaller count by `merge_heads`. Pairs must
    attend over the same number of tokens.
    """
    if len(student_maps) != len(teacher_maps) or not student_maps:
        raise ValueError("attention_loss needs matching non-empty pairs of attention maps")
    losses = []
    for s, t in zip(student_maps, teacher_maps, strict=True):
        if s.shape[-1] != t.shape[-1]:
            raise ValueError(
                f"student attends over {s.shape[-1]} tokens, teacher over {t.shape[-1]}"
            )
        heads = min(s.shape[1], t.shape[1])
        if s.shape[1] % heads or t.shape[1] % heads:
            heads = 1
        s, t = merge_heads(s.float(), heads), merge_heads(t.detach().float(), heads)
        # Σ_j t log t − t log s per row, 0 · log 0 = 0; clamp: a softmax can underflow to 0.
        kl = (torch.special.xlogy(t, t) - t * s.clamp_min(1e-12).log()).sum(-1)
        losses.append(kl.mean())
    return torch.stack(losses).mean()
