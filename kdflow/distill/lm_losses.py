"""Token-level distillation losses of a causal LM, computed in chunks of tokens.

Why chunks: N × L tokens over a vocabulary of V make N·L·V logits, 524 MB in float32 at
8 × 512 × 32,000, and the softmax, the targets' terms and the gradient each add as much
again. The loss here never builds them. It takes the student's last hidden states and LM
head, keeps only the counted tokens (labels != -100, gathered first so padding costs
nothing) and, for each chunk of C tokens, computes the chunk's logits in float32 and its
summed cross-entropy and divergence under `torch.utils.checkpoint.checkpoint(use_reentrant=
False)`: the forward keeps none of the chunk's C × V tensors, the backward recomputes them
one chunk at a time. Inside a chunk one autograd function (`_Reductions`) takes the logits
to the C × (K + 1) numbers the losses need, keeping only the logits and a bool mask, and
its backward builds the gradient in one buffer, ROWS rows at a time. Peak memory is about
two C × V float32 (logits, their gradient) and a bool mask, instead of several N·L·V, for
a second head matmul per chunk (`benchmarks/results/lm_loss_memory.md`).

The alternatives: torchtune's `ForwardKLWithChunkedOutputLoss` chunks logits that the model
has already produced (its `num_output_chunks`), so the logits of the whole batch exist in
the model's dtype; Liger-Kernel's fused linear losses (`LigerFusedLinearCrossEntropyLoss`,
`LigerFusedLinearJSD`) fuse the head and the loss in Triton kernels on GPU and compute the
gradients in the forward (no recomputation, but no CPU); Liger's `chunked_loss` module is
pure torch but the package needs triton to import; TRL's `GKDTrainer.generalized_jsd_loss`
is dense over N × L × V. This module is plain torch and runs the same on CPU and GPU.

Teacher targets are sparse: per token K distinct ids S and the ensemble teacher's
probabilities p_i at temperature T (padding slots have p = 0 and any id). The rest of the
teacher's mass, p_tail = 1 − Σ_S p_i, is kept as ONE tail bucket rather than renormalising
the top-k (which would tell the student the teacher is surer than it is); the student's
tail is q_tail = 1 − Σ_S q_i over the same ids. Both are then proper distributions over
S ∪ {tail} and every loss is the exact divergence between these coarsened distributions,
which is the full-vocabulary one when S covers the vocabulary. log q_tail is log(1 − Σ_S q_i)
from the K logits over S (the sum in float64) when q_tail ≥ 5 % (`FAST_TAIL`): no pass over
the vocabulary, and the tail's gradient folds into the softmax term the cross-entropy needs
anyway, so at T = 1 the backward makes one exp pass over C × V, as plain next-token training
does. Rows where S holds more than 95 % of the student's mass take the logsumexp of the
student's logits with S masked out, minus the full logsumexp: a sum of positive terms, exact
even when S holds all but e^-100 of the mass, where log1p(−Σ_S q_i) would round to −inf.
What KD adds to a training step, by student size: `benchmarks/results/lm_step_cost.md`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from kdflow.config.settings import KD_LOSSES

IGNORE_INDEX = -100
"""A label that does not count: padding, a document's end, prompt tokens."""
TAIL_FLOOR = 1e-8
"""The smallest teacher tail reverse KL takes the log of. A tail of 1 − Σ float16 top-k
probabilities below ~1e-4 is rounding noise (and clamps to 0); KL(q ‖ p) with p_tail = 0 is
infinite, so such a tail counts as 1e-8: log 1e-8 ≈ −18, a firm but finite push."""
ROWS = 128
"""Rows of a chunk whose softmax terms the backward builds at once (a ROWS × V temporary)."""
_MASKED = -1e30
"""Stands in for −inf where the student's logits over S are masked out: finite, so a row
whose S is the whole vocabulary gives log q_tail ≈ −1e30 and 0 · log q_tail = 0, not nan."""


@dataclass
class LMLoss:
    """A batch's loss and its parts, each a mean over the batch's counted tokens."""

    total: torch.Tensor
    """α · CE + (1 − α) · T² · KD; a scalar that backpropagates."""
    hard: torch.Tensor
    """The mean next-token cross-entropy at temperature 1, detached."""
    soft: torch.Tensor | None
    """The mean divergence at T (before T²), detached; None without targets."""
    tokens: int
    """The counted tokens (labels != -100)."""


def _check(kind: str, temperature: float, beta: float, target_ids: torch.Tensor | None,
           target_probs: torch.Tensor | None) -> None:
    if kind not in KD_LOSSES:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KD_LOSSES)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if (target_ids is None) != (target_probs is None):
        raise ValueError("give both target_ids and target_probs, or neither")


def _counted(
    x: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor | None, probs: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The rows of x (N × L × D) and of the targets at counted positions, in order."""
    if x.shape[:-1] != labels.shape:
        raise ValueError(f"labels {tuple(labels.shape)} do not match {tuple(x.shape)}")
    if ids is not None and probs is not None and not (
            ids.shape[:-1] == labels.shape and ids.shape == probs.shape):
        raise ValueError(f"target ids {tuple(ids.shape)} and probs {tuple(probs.shape)} do "
                         f"not match labels {tuple(labels.shape)} × K")
    keep = (labels.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1)
    every = keep.numel() == labels.numel()  # then views: no copy of N·L·V dense logits

    def pick(t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(-1, t.shape[-1]) if t.dim() > labels.dim() else t.reshape(-1)
        return flat if every else flat.index_select(0, keep)

    rows, lab = pick(x), pick(labels).long()
    if ids is None or probs is None:
        return rows, lab, None, None
    return rows, lab, pick(ids).long(), pick(probs).float()


def _logsumexp(x: torch.Tensor, mask: torch.Tensor | None = None, scale: float = 1.0
               ) -> torch.Tensor:
    """logsumexp(scale · x) over the last dim, x masked to _MASKED, with one C × V
    temporary (torch.logsumexp makes two)."""
    t = x.masked_fill(mask, _MASKED) if mask is not None else x.mul(scale)
    m = t.amax(-1, keepdim=True)
    return t.sub_(m).exp_().sum(-1).log_().add_(m.squeeze(-1))


FAST_TAIL = 0.05
"""A row's student tail q_tail = 1 − Σ_S q_i is computed from its K logits over S when it is
at least this (log of a float64 sum: error under 1e-5), not by a masked logsumexp over the
vocabulary; below it (S holds over 95 % of the student's mass) the masked logsumexp keeps the
tail exact down to e^-100, as the module docstring says."""


def _tail(zt: torch.Tensor, picked: torch.Tensor, ids: torch.Tensor, present: torch.Tensor,
          lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logsumexp of zt outside S per row (C), the rows computed exactly (C, bool) and their
    S mask (rows × V). Most rows take lse + log(1 − Σ_S softmax(zt)) from the K logits over
    S; rows whose tail is small, or whose present ids repeat, take the masked logsumexp."""
    vocab = zt.shape[-1]
    q_s = torch.where(present, (picked.double() - lse.double()[:, None]).exp(), 0.0)
    rest = 1.0 - q_s.sum(-1)
    fillers = -1 - torch.arange(ids.shape[-1], device=ids.device)  # distinct, never an id
    ordered = torch.where(present, ids, fillers).sort(-1).values
    exact = (rest < FAST_TAIL) | (ordered[:, 1:] == ordered[:, :-1]).any(-1)
    tail = (lse.double() + rest.clamp_min(1e-300).log()).float()
    rows = exact.nonzero().squeeze(1)
    mask = torch.zeros(rows.numel(), vocab + 1, dtype=torch.bool, device=zt.device)
    if rows.numel():
        # Padding slots scatter into a spare column, so duplicate ids all write True.
        mask = mask.scatter_(-1, torch.where(present[rows], ids[rows], vocab), True)
        tail[rows] = _logsumexp(zt[rows], mask[:, :vocab])
    return tail, exact, mask[:, :vocab]


class _Reductions(torch.autograd.Function):
    """zt = z / T (C × V) to zt at `index` (S's K ids, then the label), logsumexp(zt), the
    logsumexp of zt outside S (the tail; `_tail`) and logsumexp(z), keeping only zt and
    C × (K + 1) numbers (plus an S mask for the few rows whose tail is computed exactly):
    autograd's own gather, masked_fill and logsumexps would keep three more C × V tensors.

    Its backward makes one pass of exp over C × V at T = 1 (two at other T): the tail's
    gradient, exp(zt_j − tail) for j outside S, is softmax(zt)_j / q_tail, so it folds into
    the softmax term, less what that puts on S (a K-wide scatter)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, zt: torch.Tensor, index: torch.Tensor,
                present: torch.Tensor | None, temperature: float) -> tuple[torch.Tensor, ...]:
        lse = _logsumexp(zt)
        lse_1 = lse.clone() if temperature == 1.0 else _logsumexp(zt, scale=temperature)
        picked = zt.gather(-1, index)
        if present is not None:
            tail, exact, mask = _tail(zt, picked[:, :-1], index[:, :-1], present, lse)
        else:
            tail, exact, mask = lse * 0, None, None
        saved = (zt, index, present, lse, tail, lse_1, exact, mask, picked)
        ctx.save_for_backward(*saved)  # type: ignore[arg-type]
        ctx.temperature = temperature  # type: ignore[attr-defined]
        ctx.set_materialize_grads(False)
        return picked, lse, tail, lse_1

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *grads: torch.Tensor | None
                 ) -> tuple[torch.Tensor | None, None, None, None]:
        zt, index, present, lse, tail, lse_1, exact, mask, picked = ctx.saved_tensors  # type: ignore[attr-defined]
        t: float = ctx.temperature  # type: ignore[attr-defined]
        g_picked, g_lse, g_tail, g_lse_1 = grads
        if t == 1.0 and g_lse_1 is not None:  # d logsumexp(z) = softmax(z) = d logsumexp(zt)
            g_lse, g_lse_1 = g_lse_1 if g_lse is None else g_lse + g_lse_1, None
        if present is None:
            g_tail = None
        # The softmax term's weight per row: g_lse, plus g_tail / q_tail on the fast rows.
        fold = None
        if g_tail is not None:
            fold = torch.where(exact, 0.0, g_tail * (lse - tail).exp())
        coef = fold if g_lse is None else g_lse if fold is None else g_lse + fold
        grad = torch.zeros_like(zt)
        for r in (slice(i, i + ROWS) for i in range(0, zt.shape[0], ROWS)):
            if coef is not None:
                grad[r].add_(zt[r].sub(lse[r, None]).exp_().mul_(coef[r, None]))
            if g_lse_1 is not None:  # d logsumexp(t · zt) = t · softmax(t · zt)
                term = zt[r].mul(t).sub_(lse_1[r, None]).exp_()
                grad[r].add_(term.mul_(g_lse_1[r, None] * t))
        if fold is not None:
            # The fold put softmax_j · g_tail / q_tail on S too, where the tail has no
            # gradient: take it back (exp of the same float32 numbers as above).
            s_ids = index[:, :-1]
            on_s = (picked[:, :-1] - lse[:, None]).exp() * fold[:, None]
            grad.scatter_add_(-1, s_ids, torch.where(present, -on_s, 0.0))
        if g_tail is not None and exact is not None and mask is not None and mask.shape[0]:
            rows = exact.nonzero().squeeze(1)
            for r in (slice(i, i + ROWS) for i in range(0, rows.numel(), ROWS)):
                at = rows[r]
                term = zt[at].sub_(tail[at, None]).exp_()
                term.masked_fill_(mask[r], 0.0)  # inf there (zt ≫ tail) becomes 0, not nan
                grad.index_add_(0, at, term.mul_(g_tail[at, None]))
        if g_picked is not None:
            grad.scatter_add_(-1, index, g_picked)
        return grad, None, None, None


def _divergence(lq: torch.Tensor, p: torch.Tensor, valid: torch.Tensor, kind: str,
                beta: float) -> torch.Tensor:
    """Per-token divergence (C) between the teacher's p and the student's exp(lq) over the
    valid slots of S ∪ {tail} (C × (K + 1)); every term is finite in the other slots."""
    if kind == "jsd" and beta in (0.0, 1.0):
        kind = "forward_kl" if beta == 0.0 else "reverse_kl"
    floor = torch.full_like(p, torch.finfo(torch.float32).tiny)
    floor[:, -1] = TAIL_FLOOR
    lp = torch.maximum(p, floor).log()
    q = lq.exp()
    if kind == "forward_kl":
        terms = torch.special.xlogy(p, p) - p * lq
    elif kind == "reverse_kl":
        terms = q * (lq - lp)
    else:
        lm = torch.logaddexp(lp + math.log(beta), lq + math.log1p(-beta))
        terms = beta * (torch.special.xlogy(p, p) - p * lm) + (1.0 - beta) * q * (lq - lm)
    return (terms * valid).sum(-1)


def _token_sums(zt: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor | None,
                probs: torch.Tensor | None, kind: str, temperature: float, beta: float,
                ce_grad: bool, kd_grad: bool) -> torch.Tensor:
    """[Σ CE, Σ KD] over the rows of zt = logits / T (C × V, float32)."""
    vocab = zt.shape[-1]
    index, present = labels[:, None], None
    if ids is not None and probs is not None:
        present = probs > 0
        index = torch.cat([ids, index], -1)
    picked, lse, tail, lse_1 = _Reductions.apply(zt, index, present, temperature)
    ce = (lse_1 - temperature * picked[:, -1]).sum()
    ce = ce if ce_grad else ce.detach()
    if present is None or probs is None:
        return torch.stack([ce, torch.zeros_like(ce)])
    lq = torch.cat([picked[:, :-1] - lse[:, None], (tail - lse)[:, None]], -1)
    has_tail = present.sum(-1, keepdim=True) < vocab
    p_s = torch.where(present, probs, 0.0)
    p_tail = torch.where(has_tail, (1.0 - p_s.sum(-1, keepdim=True)).clamp(0.0, 1.0), 0.0)
    kd = _divergence(lq, torch.cat([p_s, p_tail], -1), torch.cat([present, has_tail], -1),
                     kind, beta).sum()
    return torch.stack([ce, kd if kd_grad else kd.detach()])


def _chunk_sums(h: torch.Tensor, head: nn.Module, labels: torch.Tensor,
                ids: torch.Tensor | None, probs: torch.Tensor | None, kind: str,
                temperature: float, beta: float, ce_grad: bool, kd_grad: bool) -> torch.Tensor:
    """A chunk's [Σ CE, Σ KD]: the head's matmul may run in bfloat16 under autocast, the
    softmax math runs in float32."""
    logits = head(h)
    with torch.autocast(logits.device.type, enabled=False):
        zt = logits.float()
        del logits
        if temperature != 1.0:
            zt = zt.div_(temperature)  # in place: the head's matmul keeps no output
        return _token_sums(zt, labels, ids, probs, kind, temperature, beta, ce_grad, kd_grad)


def _result(sums: torch.Tensor, tokens: int, alpha: float, temperature: float,
            targets: bool) -> LMLoss:
    hard, soft = sums[0] / tokens, sums[1] / tokens
    if not targets:
        return LMLoss(hard, hard.detach(), None, tokens)
    total = alpha * hard + (1.0 - alpha) * temperature**2 * soft
    return LMLoss(total, hard.detach(), soft.detach(), tokens)


def _empty(x: torch.Tensor, targets: bool) -> LMLoss:
    zero = torch.zeros((), device=x.device)
    return LMLoss(x.sum() * 0.0, zero, zero if targets else None, 0)


def chunked_lm_loss(
    hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor,
    target_ids: torch.Tensor | None = None, target_probs: torch.Tensor | None = None, *,
    kind: str = "forward_kl", alpha: float = 0.0, temperature: float = 1.0, beta: float = 0.5,
    chunk_tokens: int = 1024,
) -> LMLoss:
    """Token-level KD of a causal LM, the LM head applied chunk by chunk.

        L = α · CE + (1 − α) · T² · KD,  both means over the batch's counted tokens

    CE is the next-token cross-entropy of softmax(z) against `labels` (N × L, already
    shifted: position t's label is token t + 1; -100 does not count). KD compares, per
    token, the teacher's p_T over S ∪ {tail} (`target_ids`, `target_probs`: N × L × K; see
    the module docstring) with the student's q_T = softmax(z / T), coarsened the same way:

      forward_kl  KL(p_T ‖ q_T) = Σ p log(p / q). Hinton et al. 2015, "Distilling the
                  Knowledge in a Neural Network", applied per token as in Kim & Rush 2016,
                  "Sequence-Level Knowledge Distillation" (word-level KD) and torchtune's
                  `ForwardKLLoss`. Mean-seeking: q must cover all that p covers.
      reverse_kl  KL(q_T ‖ p_T) = Σ q log(q / p). Gu et al. 2024, "MiniLLM: Knowledge
                  Distillation of Large Language Models" (ICLR): mode-seeking, a small
                  student need not spread mass over what it cannot model.
      jsd         β · KL(p ‖ m) + (1 − β) · KL(q ‖ m), m = β · p + (1 − β) · q: the
                  generalised JSD of Agarwal et al. 2024, "On-Policy Distillation of
                  Language Models: Learning from Self-Generated Mistakes" (GKD, ICLR), in
                  TRL's convention (`GKDTrainer.generalized_jsd_loss`); as there, β = 0 is
                  forward KL(p ‖ q) and β = 1 reverse KL(q ‖ p) exactly.

    T² keeps the soft gradient's scale independent of T (Hinton et al. §2). `hidden` is
    N × L × H before `head`, the model's output embeddings (`get_output_embeddings()`).
    Without targets L = CE. Chunks of `chunk_tokens` counted tokens run under activation
    checkpointing (module docstring); `dense_lm_loss` is the same loss on full logits.
    """
    _check(kind, temperature, beta, target_ids, target_probs)
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    targets = target_ids is not None
    h, lab, ids, probs = _counted(hidden, labels, target_ids, target_probs)
    tokens = int(lab.numel())
    if tokens == 0:
        return _empty(hidden, targets)
    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(
        p.requires_grad for p in head.parameters()))
    # The reported part whose weight is 0 needs no graph (α = 0: CE; α = 1: KD).
    ce_grad = grad and (not targets or alpha != 0.0)
    kd_grad = grad and targets and alpha != 1.0
    sums = torch.zeros(2, device=hidden.device)
    for start in range(0, tokens, chunk_tokens):
        part = slice(start, start + chunk_tokens)
        args = (h[part], head, lab[part], None if ids is None else ids[part],
                None if probs is None else probs[part], kind, temperature, beta, ce_grad,
                kd_grad)
        sums = sums + (checkpoint(_chunk_sums, *args, use_reentrant=False) if grad
                       else _chunk_sums(*args))
    return _result(sums, tokens, alpha, temperature, targets)


def dense_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor,
    target_ids: torch.Tensor | None = None, target_probs: torch.Tensor | None = None, *,
    kind: str = "forward_kl", alpha: float = 0.0, temperature: float = 1.0, beta: float = 0.5,
) -> LMLoss:
    """`chunked_lm_loss` on full N × L × V logits, all tokens at once: the unchunked
    reference (the same formulas, the same tail bucket, the same means)."""
    _check(kind, temperature, beta, target_ids, target_probs)
    targets = target_ids is not None
    z, lab, ids, probs = _counted(logits, labels, target_ids, target_probs)
    tokens = int(lab.numel())
    if tokens == 0:
        return _empty(logits, targets)
    grad = torch.is_grad_enabled() and logits.requires_grad
    with torch.autocast(logits.device.type, enabled=False):
        zt = z.float() if temperature == 1.0 else z.float() / temperature
        sums = _token_sums(zt, lab, ids, probs, kind, temperature, beta, grad and (
            not targets or alpha != 0.0), grad and targets and alpha != 1.0)
    return _result(sums, tokens, alpha, temperature, targets)


@torch.no_grad()
def token_log_probs(
    hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor, chunk_tokens: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log q(label) float32, argmax == label bool), one entry per counted token in order,
    at temperature 1: what perplexity and token accuracy are made of."""
    h, lab, _, _ = _counted(hidden, labels, None, None)
    logprobs = torch.empty(lab.numel(), dtype=torch.float32, device=hidden.device)
    correct = torch.empty(lab.numel(), dtype=torch.bool, device=hidden.device)
    for start in range(0, lab.numel(), chunk_tokens):
        part = slice(start, start + chunk_tokens)
        z = head(h[part]).float()
        logprobs[part] = (z.gather(-1, lab[part, None]) - z.logsumexp(-1, keepdim=True))[:, 0]
        correct[part] = z.argmax(-1) == lab[part]
    return logprobs, correct


def _top_k(x: torch.Tensor, head: nn.Module | None, k: int, temperature: float,
           chunk_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, fp16_min = x.reshape(-1, x.shape[-1]), torch.finfo(torch.float16).min
    values = torch.empty(rows.shape[0], k, dtype=torch.float16, device=rows.device)
    ids = torch.empty(rows.shape[0], k, dtype=torch.int32, device=rows.device)
    for start in range(0, rows.shape[0], chunk_tokens):
        part = slice(start, start + chunk_tokens)
        z = (rows[part] if head is None else head(rows[part])).float() / temperature
        if k > z.shape[-1]:
            raise ValueError(f"top-{k} of a vocabulary of {z.shape[-1]}")
        top, index = z.topk(k, -1)
        values[part] = (top - z.logsumexp(-1, keepdim=True)).clamp_min(fp16_min).half()
        ids[part] = index.int()
    shape = (*x.shape[:-1], k)
    return values.reshape(shape), ids.reshape(shape)


@torch.no_grad()
def teacher_top_k(
    logits: torch.Tensor, k: int, temperature: float, chunk_tokens: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """A teacher's k most likely tokens per position from its logits (... × V):
    (log softmax(z / T) of them, float16, ... × k; their ids, int32, ... × k), largest
    first, computed `chunk_tokens` rows at a time in float32."""
    return _top_k(logits, None, k, temperature, chunk_tokens)


@torch.no_grad()
def teacher_top_k_hidden(
    hidden: torch.Tensor, head: nn.Module, k: int, temperature: float, chunk_tokens: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """`teacher_top_k` from a teacher's last hidden states (... × H) and LM head, the
    logits made chunk by chunk so that ... × V of them never exist."""
    return _top_k(hidden, head, k, temperature, chunk_tokens)


def merge_teachers(
    ids: Sequence[torch.Tensor], logprobs: Sequence[torch.Tensor],
    weights: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ensemble of M teachers' sparse distributions (each ... × k ids and log-probs at
    T) as their weighted mean over the union of their ids:

        p(i) = Σ_m w_m · p_m(i) · [i ∈ top-k of m],   w normalised to sum 1

    A token in teacher a's top-k but not in b's gets only a's share: b's probability of it
    is unknown (at most b's k-th) and stays in the tail. So each p(i) is a lower bound on
    the ensemble's mean probability and the tail 1 − Σ p an upper bound on the rest.

    Returns (ids int64, probs float32), ... × M·k: the distinct ids in increasing order, then
    padding slots of id 0 and probability 0. Sorting the concatenated ids and summing runs
    of equal ids keeps it at M·k per token, never V. With M = 1 it returns the teacher's
    ids and exp(log-probs) as they are.
    """
    w = [1.0] * len(ids) if weights is None else [float(v) for v in weights]
    if not ids or not len(ids) == len(logprobs) == len(w) or sum(w) <= 0 or min(w) < 0:
        raise ValueError(f"merge_teachers needs one ids, log-probs and weight ≥ 0 (not all 0) "
                         f"per teacher: got {len(ids)}, {len(logprobs)}, {w}")
    if len(ids) == 1:
        return ids[0].long(), logprobs[0].float().exp()
    all_ids = torch.cat([i.long() for i in ids], -1)
    share = [c / sum(w) for c in w]
    all_p = torch.cat([lp.float().exp() * share[m] for m, lp in enumerate(logprobs)], -1)
    sorted_ids, order = all_ids.sort(dim=-1, stable=True)
    new_run = torch.ones_like(sorted_ids, dtype=torch.bool)
    new_run[..., 1:] = sorted_ids[..., 1:] != sorted_ids[..., :-1]
    slot = new_run.cumsum(-1) - 1
    probs = torch.zeros_like(all_p).scatter_add_(-1, slot, all_p.gather(-1, order))
    # Every id of a run is the same, so which one lands in its slot does not matter.
    merged = torch.zeros_like(sorted_ids).scatter_(-1, slot, sorted_ids)
    return merged, probs
