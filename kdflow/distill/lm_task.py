"""The causal-LM task: next-token logits per token, top-k teacher caches, token-level KD.

A row is a packed block of L tokens (`kdflow.models.hf_lm`); its label is the block's
next-token targets (N × L, -100 where a position does not count: padding, a document's
end, prompt tokens). A model's output is its last hidden states; the losses apply the LM
head chunk by chunk (`kdflow.distill.lm_losses`), so B × L × V logits never exist.

Teacher outputs, cached or online, are per token the top-k log-probabilities at the run's
temperature (float16) and their token ids (int16 when the vocabulary fits, else int32):
what is left of each teacher's distribution is one tail bucket of mass 1 − Σ top-k, which
the losses keep rather than renormalising the top-k (renormalising would tell the student
that the teacher is surer than it is). With k = 64 and int16 ids a token costs 256 bytes
(int32: 384), against about 300 that DistillKit quotes for its sparse logits. Several
teachers combine per token as the weighted mean of their sparse distributions over the
union of their ids (`merge_teachers`).

Validation scores token accuracy (the share of counted tokens whose argmax is the
target), the metric a teacher keeps its best epoch by; the evaluate step reports
perplexity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from kdflow.data.prepared import Split
from kdflow.distill import lm_losses
from kdflow.distill.losses import LossParts
from kdflow.distill.targets import Ensemble

EVAL_ROWS = 16
"""Blocks per forward pass when scoring (16 × 512 tokens)."""


def index_dtype(vocab: int) -> torch.dtype:
    return torch.int16 if vocab <= torch.iinfo(torch.int16).max else torch.int32


@dataclass
class TokenTargets:
    """The ensemble's sparse per-token targets of some blocks, from each teacher's cached
    top-k. `rows(index)` packs, for the loop's gather-and-slice batching, the merged
    probabilities and ids into one float32 N × L × 2K tensor (ids below 2^24 are exact in
    float32); `unpack` splits it again."""

    logprobs: list[torch.Tensor]
    indices: list[torch.Tensor]
    weights: tuple[float, ...]
    entropy: torch.Tensor | None = None

    def rows(self, index: torch.Tensor | None = None) -> torch.Tensor:
        pick = (lambda t: t) if index is None else (lambda t: t[index])
        ids, probs = lm_losses.merge_teachers(
            [pick(t).long() for t in self.indices],
            [pick(t).float() for t in self.logprobs],
            list(self.weights),
        )
        return torch.cat([probs.float(), ids.float()], dim=-1)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.logprobs, *self.indices])


def unpack(soft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids int64, probs float32) from `TokenTargets.rows`' packed tensor."""
    k = soft.shape[-1] // 2
    return soft[..., k:].long(), soft[..., :k]


class CausalLM:
    """Per-token logits over a vocabulary; `kd_loss` (forward_kl, reverse_kl, jsd) with
    `beta` for jsd."""

    name = "causal-lm"
    metric = "accuracy"
    stream_rows = 1024
    predict_rows = EVAL_ROWS

    def __init__(self, kd_loss: str = "forward_kl", beta: float = 0.5,
                 temperature: float = 1.0) -> None:
        self.kd_loss, self.beta, self.temperature = kd_loss, beta, temperature

    def teacher_parts(self, model: nn.Module, x: torch.Tensor, top_k: int
                      ) -> dict[str, torch.Tensor]:
        """A teacher's top-k log-probabilities at T and their ids, per token."""
        hidden = model(x)
        head: nn.Linear = model.lm_head  # type: ignore[assignment]
        values, ids = lm_losses.teacher_top_k_hidden(hidden, head, top_k, self.temperature)
        vocab = int(head.weight.shape[0])
        return {"train_values": values, "train_indices": ids.to(index_dtype(vocab))}

    def cache_parts(self, logits: torch.Tensor, top_k: int) -> dict[str, torch.Tensor]:
        values, ids = lm_losses.teacher_top_k(logits, top_k, self.temperature)
        return {"train_values": values, "train_indices": ids.to(index_dtype(logits.shape[-1]))}

    def targets(self, parts: list[dict[str, torch.Tensor]], ensemble: Ensemble) -> TokenTargets:
        return TokenTargets(
            [p["train_values"] for p in parts],
            [p["train_indices"] for p in parts],
            ensemble.weights,
        )

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor | None,
             temperature: float, alpha: float, model: nn.Module | None = None) -> LossParts:
        assert model is not None, "the causal-LM loss applies the model's LM head"
        ids, probs = unpack(soft) if soft is not None else (None, None)
        out = lm_losses.chunked_lm_loss(
            outputs, model.lm_head, labels, ids, probs,  # type: ignore[arg-type]
            kind=self.kd_loss, alpha=alpha, temperature=temperature, beta=self.beta,
        )
        soft_part = out.soft if out.soft is not None else torch.zeros((), device=out.hard.device)
        return LossParts(total=out.total, hard=out.hard, soft=soft_part)

    def hard_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("the causal-LM loss always computes its label part")

    @torch.no_grad()
    def score(self, model: nn.Module, split: Split) -> float:
        return token_metrics(model, split)["token_accuracy"]


@torch.no_grad()
def token_metrics(model: nn.Module, split: Split, rows: int = EVAL_ROWS, per_row: bool = False
                  ) -> dict[str, Any]:
    """Perplexity (exp of the mean negative log-likelihood per counted token), token
    accuracy and the counted tokens of `model` on `split`; with `per_row`, also each row's
    summed negative log-likelihood (`row_nll`, float64) and counted tokens (`row_tokens`):
    the paired evidence of the perplexity gates."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    total, correct, tokens = 0.0, 0, 0
    row_nll: list[np.ndarray] = []
    row_tokens: list[np.ndarray] = []
    for start in range(0, len(split.x), rows):
        x = torch.from_numpy(np.ascontiguousarray(split.x[start : start + rows])).to(device)
        y = torch.from_numpy(np.ascontiguousarray(split.y[start : start + rows])).to(device)
        logprobs, right = lm_losses.token_log_probs(model(x), model.lm_head, y)  # type: ignore[arg-type]
        total += float(logprobs.double().sum())
        correct += int(right.sum())
        tokens += int(logprobs.numel())
        if per_row:  # counted tokens come row by row, in order
            counts = (y != -100).sum(1).cpu().numpy()
            owner = np.repeat(np.arange(len(counts)), counts)
            row_nll.append(np.bincount(owner, weights=-logprobs.double().cpu().numpy(),
                                       minlength=len(counts)))
            row_tokens.append(counts)
    model.train(was)
    nll = -total / max(tokens, 1)
    found: dict[str, Any] = {
        "perplexity": float(np.exp(min(nll, 700.0))),
        "log_likelihood": -nll,
        "token_accuracy": correct / max(tokens, 1),
        "tokens": tokens,
    }
    if per_row:
        found["row_nll"] = np.concatenate(row_nll) if row_nll else np.zeros(0)
        found["row_tokens"] = np.concatenate(row_tokens) if row_tokens else np.zeros(0, int)
    return found
