"""Token-level LM distillation losses against torch's full-vocabulary divergences, a hand
computation of the tail bucket, and the unchunked reference."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdflow.distill import lm_losses
from kdflow.distill.lm_losses import (
    TAIL_FLOOR,
    chunked_lm_loss,
    dense_lm_loss,
    merge_teachers,
    teacher_top_k,
    teacher_top_k_hidden,
    token_log_probs,
)

N, L, H, V = 3, 6, 8, 11
KINDS = ["forward_kl", "reverse_kl", "jsd"]


def grads(loss: torch.Tensor, hidden: torch.Tensor, head: nn.Linear) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, [hidden, head.weight, head.bias]))


def student(seed: int = 0, scale: float = 1.0) -> tuple[torch.Tensor, nn.Linear]:
    torch.manual_seed(seed)
    head = nn.Linear(H, V)
    with torch.no_grad():
        head.weight.mul_(scale)
    return torch.randn(N, L, H, requires_grad=True), head


def padded_labels(seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    labels = torch.randint(0, V, (N, L))
    labels[0, 4:] = -100  # padding
    labels[1, 0] = -100  # a prompt token
    labels[2, 1:3] = -100
    return labels


def full_targets(teacher_logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor,
                                                                             torch.Tensor]:
    """K = V: every id, the teacher's whole softmax at T; no tail."""
    ids = torch.arange(V).expand(*teacher_logits.shape[:-1], V)
    return ids, F.softmax(teacher_logits / temperature, -1)


def sparse_targets(k: int = 4, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """k distinct ids per token with mass 0.6 among them, one padding slot (p = 0)
    repeating the first id."""
    torch.manual_seed(seed)
    ids = torch.rand(N, L, V).argsort(-1)[..., :k]
    probs = F.softmax(torch.randn(N, L, k), -1) * 0.6
    ids = torch.cat([ids, ids[..., :1]], -1)
    probs = torch.cat([probs, torch.zeros(N, L, 1)], -1)
    return ids, probs


def torch_divergence(s: torch.Tensor, t: torch.Tensor, kind: str, temperature: float,
                     beta: float = 0.5) -> torch.Tensor:
    """Per-token full-vocabulary divergence, written TRL's way with F.kl_div."""
    lq = F.log_softmax(s.double() / temperature, -1)
    lp = F.log_softmax(t.double() / temperature, -1)
    if kind == "forward_kl":
        return F.kl_div(lq, lp, reduction="none", log_target=True).sum(-1)
    if kind == "reverse_kl":
        return F.kl_div(lp, lq, reduction="none", log_target=True).sum(-1)
    lm = torch.logsumexp(torch.stack([lq + math.log(1 - beta), lp + math.log(beta)]), 0)
    return (beta * F.kl_div(lm, lp, reduction="none", log_target=True)
            + (1 - beta) * F.kl_div(lm, lq, reduction="none", log_target=True)).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("kind", KINDS)
def test_full_vocabulary_targets_give_torch_divergences(kind: str, temperature: float) -> None:
    hidden, head = student()
    labels = padded_labels()
    teacher = torch.randn(N, L, V) * 2
    ids, probs = full_targets(teacher, temperature)
    out = chunked_lm_loss(hidden, head, labels, ids, probs, kind=kind, temperature=temperature,
                          alpha=0.3, chunk_tokens=4)
    counted = labels != -100
    logits = head(hidden)
    expected = torch_divergence(logits, teacher, kind, temperature)[counted].mean()
    assert out.soft is not None
    torch.testing.assert_close(out.soft.double(), expected, rtol=1e-5, atol=1e-6)
    ce = F.cross_entropy(logits[counted].double(), labels[counted])
    total = 0.3 * ce + 0.7 * temperature**2 * expected
    for a, b in zip(grads(out.total, hidden, head), grads(total, hidden, head), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_jsd_endpoints_are_forward_and_reverse_kl() -> None:
    hidden, head = student()
    labels = padded_labels()
    ids, probs = sparse_targets()
    loss = {(kind, beta): chunked_lm_loss(hidden, head, labels, ids, probs, kind=kind,
                                          beta=beta, temperature=2.0).soft
            for kind, beta in [("jsd", 0.0), ("jsd", 1.0), ("jsd", 0.5), ("forward_kl", 0.5),
                               ("reverse_kl", 0.5)]}
    assert loss["jsd", 0.0] == loss["forward_kl", 0.5]
    assert loss["jsd", 1.0] == loss["reverse_kl", 0.5]
    assert loss["jsd", 0.5] != loss["forward_kl", 0.5]


def test_tail_bucket_matches_hand_computation() -> None:
    z = [2.0, 1.0, 0.0, -1.0]
    logits = torch.tensor([[z]], requires_grad=True)
    ids = torch.tensor([[[0, 2, 0]]])  # the last slot is padding (p = 0), repeating id 0
    probs = torch.tensor([[[0.5, 0.2, 0.0]]])
    labels = torch.tensor([[1]])
    q = [math.exp(v) / sum(math.exp(u) for u in z) for v in z]
    p_s, q_s, p_tail, q_tail = [0.5, 0.2], [q[0], q[2]], 0.3, q[1] + q[3]
    pairs = list(zip([*p_s, p_tail], [*q_s, q_tail], strict=True))
    m = [(0.3 * pi + 0.7 * qi) for pi, qi in pairs]
    expected = {
        "forward_kl": sum(pi * math.log(pi / qi) for pi, qi in pairs),
        "reverse_kl": sum(qi * math.log(qi / pi) for pi, qi in pairs),
        "jsd": sum(0.3 * pi * math.log(pi / mi) + 0.7 * qi * math.log(qi / mi)
                   for (pi, qi), mi in zip(pairs, m, strict=True)),
    }
    for kind, value in expected.items():
        out = dense_lm_loss(logits, labels, ids, probs, kind=kind, beta=0.3)
        assert out.soft is not None
        assert out.soft.item() == pytest.approx(value, rel=1e-5)
        assert out.hard.item() == pytest.approx(-math.log(q[1]), rel=1e-6)


def test_reverse_kl_counts_a_zero_tail_as_the_floor() -> None:
    z = [2.0, 1.0, 0.0]
    logits = torch.tensor([[z]])
    ids, probs = torch.tensor([[[0, 1]]]), torch.tensor([[[0.75, 0.25]]])  # tail 0
    q = [math.exp(v) / sum(math.exp(u) for u in z) for v in z]
    expected = (q[0] * math.log(q[0] / 0.75) + q[1] * math.log(q[1] / 0.25)
                + q[2] * math.log(q[2] / TAIL_FLOOR))
    out = dense_lm_loss(logits, torch.tensor([[0]]), ids, probs, kind="reverse_kl")
    assert out.soft is not None and out.soft.item() == pytest.approx(expected, rel=1e-5)


def reference_loss(logits: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor,
                   probs: torch.Tensor, kind: str, temperature: float = 1.0, alpha: float = 0.0,
                   beta: float = 0.5) -> torch.Tensor:
    """The loss over S ∪ {tail} written out in float64 on dense masks and summed student
    probabilities (q_tail = Σ_{j∉S} q_j), for values and autograd gradients."""
    counted = labels != -100
    z, y, ids, p_s = logits.double()[counted], labels[counted], ids[counted], probs[counted]
    q_all = F.softmax(z / temperature, -1)
    present = p_s > 0
    in_s = torch.zeros(len(z), z.shape[-1] + 1, dtype=torch.bool)
    in_s = in_s.scatter_(-1, torch.where(present, ids, z.shape[-1]), True)[:, :-1]
    q = torch.cat([q_all.gather(-1, ids), (q_all * ~in_s).sum(-1, keepdim=True)], -1)
    p_s = torch.where(present, p_s.double(), 0.0)
    p = torch.cat([p_s, (1 - p_s.sum(-1, keepdim=True)).clamp(0, 1)], -1)
    valid = torch.cat([present, torch.ones_like(present[:, :1])], -1)
    floor = torch.full_like(p, 1e-300)
    floor[:, -1] = TAIL_FLOOR
    lp = torch.where(valid, torch.maximum(p, floor), 1.0).log()
    lq = torch.where(valid, q, 1.0).log()
    if kind == "jsd" and beta == 0.0 or kind == "forward_kl":
        terms = torch.special.xlogy(p, p) - p * lq
    elif kind == "jsd" and beta == 1.0 or kind == "reverse_kl":
        terms = q * (lq - lp)
    else:
        lm = (beta * lp.exp() + (1 - beta) * q).log()
        terms = beta * (torch.special.xlogy(p, p) - p * lm) + (1 - beta) * q * (lq - lm)
    kd = torch.where(valid, terms, 0.0).sum(-1).mean()
    return alpha * F.cross_entropy(z, y) + (1 - alpha) * temperature**2 * kd


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_tail_is_exact_when_top_k_holds_nearly_all_student_mass(kind: str) -> None:
    logits = torch.full((1, 2, 50), -50.0)
    ids = torch.tensor([[[3, 7, 9], [0, 1, 2]]])
    logits[0, 0, [3, 7, 9]] = 50.0  # q_tail = 47 e^-100 / 3 ≈ 6e-43: log1p(-Σ q_S) gives -inf
    logits[0, 1, 0] = 30.0
    logits.requires_grad_(True)
    probs = torch.tensor([[[0.5, 0.3, 0.1], [0.9, 0.05, 0.0499]]])
    out = dense_lm_loss(logits, torch.zeros(1, 2, dtype=torch.long), ids, probs, kind=kind)
    expected = reference_loss(logits, torch.zeros(1, 2, dtype=torch.long), ids, probs, kind)
    assert out.soft is not None and torch.isfinite(out.soft)
    assert out.soft.item() == pytest.approx(expected.item(), rel=1e-5)
    (grad,) = torch.autograd.grad(out.total, [logits])
    (expected_grad,) = torch.autograd.grad(expected, [logits])
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_sparse_targets_match_a_float64_reference_in_value_and_gradient(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lm_losses, "ROWS", 2)  # the backward's row blocks: 2 + 2 + 1 per chunk
    hidden, head = student()
    labels = padded_labels()
    ids, probs = sparse_targets()
    out = chunked_lm_loss(hidden, head, labels, ids, probs, kind=kind, alpha=0.3,
                          temperature=2.0, beta=0.3, chunk_tokens=5)
    expected = reference_loss(head(hidden), labels, ids, probs, kind, 2.0, 0.3, 0.3)
    torch.testing.assert_close(out.total.double(), expected, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads(out.total, hidden, head), grads(expected, hidden, head), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_confident_teacher_and_large_student_logits_stay_finite(kind: str,
                                                                temperature: float) -> None:
    hidden, head = student(scale=60.0)  # logits of magnitude ~50
    assert head(hidden).abs().max() > 50
    labels = padded_labels()
    ids = torch.rand(N, L, V).argsort(-1)[..., :4]
    probs = torch.tensor([1 - 1e-7, 5e-8, 5e-8, 0.0]).expand(N, L, 4).clone()
    probs[0] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # the tail rounds to exactly 0
    full_ids, full_probs = full_targets(torch.randn(N, L, V) * 40, temperature)  # K = V
    for targets in [(ids, probs), (full_ids, full_probs)]:
        head.zero_grad()
        hidden.grad = None
        out = chunked_lm_loss(hidden, head, labels, *targets, kind=kind, alpha=0.5,
                              temperature=temperature, chunk_tokens=5)
        out.total.backward()
        assert torch.isfinite(out.total)
        assert hidden.grad is not None and torch.isfinite(hidden.grad).all()
        assert torch.isfinite(head.weight.grad).all()  # type: ignore[arg-type]


@pytest.mark.parametrize("chunk", [1, 5, 7, 1000])
@pytest.mark.parametrize("kind", KINDS)
def test_chunked_equals_dense_in_value_and_gradient(kind: str, chunk: int) -> None:
    hidden, head = student()
    ids, probs = sparse_targets()
    for labels in [padded_labels(), torch.randint(0, V, (N, L))]:
        settings = {"kind": kind, "alpha": 0.3, "temperature": 2.0, "beta": 0.4}
        chunked = chunked_lm_loss(hidden, head, labels, ids, probs, chunk_tokens=chunk,
                                  **settings)  # type: ignore[arg-type]
        dense = dense_lm_loss(head(hidden), labels, ids, probs, **settings)  # type: ignore[arg-type]
        torch.testing.assert_close(chunked.total, dense.total)
        torch.testing.assert_close(chunked.soft, dense.soft)
        torch.testing.assert_close(chunked.hard, dense.hard)
        assert chunked.tokens == dense.tokens == int((labels != -100).sum())
        for a, b in zip(grads(chunked.total, hidden, head), grads(dense.total, hidden, head),
                        strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_without_targets_the_loss_is_cross_entropy(chunk: int) -> None:
    hidden, head = student()
    labels = padded_labels()
    out = chunked_lm_loss(hidden, head, labels, chunk_tokens=chunk)
    expected = F.cross_entropy(head(hidden).reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    assert out.soft is None
    torch.testing.assert_close(out.total, expected)
    torch.testing.assert_close(out.hard, expected.detach())
    for a, b in zip(grads(out.total, hidden, head), grads(expected, hidden, head), strict=True):
        torch.testing.assert_close(a, b)


def test_alpha_mixes_the_parts_and_temperature_squared_scales_kd() -> None:
    hidden, head = student()
    labels = padded_labels()
    ids, probs = sparse_targets()
    ce = F.cross_entropy(head(hidden).reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    out = chunked_lm_loss(hidden, head, labels, ids, probs, alpha=0.25, temperature=3.0,
                          chunk_tokens=4)
    assert out.soft is not None
    torch.testing.assert_close(out.hard, ce.detach())
    torch.testing.assert_close(out.total.detach(), 0.25 * ce.detach() + 0.75 * 9.0 * out.soft)
    pure_ce = chunked_lm_loss(hidden, head, labels, ids, probs, alpha=1.0, temperature=3.0)
    torch.testing.assert_close(pure_ce.total, ce)


def test_means_are_over_the_counted_tokens_of_the_whole_batch() -> None:
    hidden, head = student()
    labels = torch.full((N, L), -100)
    labels[0, 0] = 1  # one counted token in the first row, six in the second, none in the third
    labels[1] = torch.arange(L)
    teacher = torch.randn(N, L, V)
    ids, probs = full_targets(teacher, 1.0)
    out = chunked_lm_loss(hidden, head, labels, ids, probs, chunk_tokens=4)
    per_token = torch_divergence(head(hidden), teacher, "forward_kl", 1.0)[labels != -100]
    assert out.tokens == 7 and out.soft is not None
    torch.testing.assert_close(out.soft.double(), per_token.mean())
    chunk_means = (per_token[:4].mean() + per_token[4:].mean()) / 2
    row_means = (per_token[:1].mean() + per_token[1:].mean()) / 2
    assert abs(out.soft.item() - chunk_means.item()) > 1e-3
    assert abs(out.soft.item() - row_means.item()) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_kd_vanishes_when_student_matches_teacher_and_gradient_flows_otherwise(
    kind: str,
) -> None:
    hidden, head = student()
    labels = padded_labels()
    ids, probs = full_targets(head(hidden).detach(), 2.0)
    out = chunked_lm_loss(hidden, head, labels, ids, probs, kind=kind, temperature=2.0)
    (grad,) = torch.autograd.grad(out.total, [hidden])
    assert out.soft is not None and abs(out.soft.item()) < 1e-6
    assert grad.abs().max() < 1e-5  # the minimum
    ids, probs = full_targets(head(hidden).detach().roll(1, -1), 2.0)
    out = chunked_lm_loss(hidden, head, labels, ids, probs, kind=kind, temperature=2.0)
    (grad,) = torch.autograd.grad(out.total, [hidden])
    assert out.soft is not None and out.soft.item() > 1e-2
    assert grad[labels != -100].abs().min(-1).values.gt(0).all()
    assert grad[labels == -100].abs().max() == 0


def test_a_batch_without_counted_tokens_gives_zero() -> None:
    hidden, head = student()
    ids, probs = sparse_targets()
    out = chunked_lm_loss(hidden, head, torch.full((N, L), -100), ids, probs)
    out.total.backward()
    assert out.tokens == 0 and out.total.item() == 0 and out.soft is not None


def test_unknown_kind_is_refused() -> None:
    hidden, head = student()
    with pytest.raises(ValueError, match="unknown kind 'kl'"):
        chunked_lm_loss(hidden, head, padded_labels(), kind="kl")


def test_merge_teachers_is_the_weighted_mean_over_the_union_of_ids() -> None:
    torch.manual_seed(3)
    k, weights = 4, [0.5, 0.3, 0.2]
    logits = [torch.randn(N, L, V) for _ in weights]
    tops = [teacher_top_k(z, k, 2.0) for z in logits]
    ids, probs = merge_teachers([t[1].long() for t in tops], [t[0].float() for t in tops],
                                [w * 10 for w in weights])  # normalised inside
    assert ids.shape == probs.shape == (N, L, 3 * k) and ids.dtype == torch.int64
    dense = torch.zeros(N, L, V, dtype=torch.float64)
    for w, (lp, i) in zip(weights, tops, strict=True):
        dense.scatter_add_(-1, i.long(), w * lp.double().exp())
    merged = torch.zeros(N, L, V, dtype=torch.float64).scatter_add_(-1, ids, probs.double())
    torch.testing.assert_close(merged, dense, rtol=1e-6, atol=1e-7)
    present = probs > 0
    assert (present.sum(-1) == (dense > 0).sum(-1)).all()  # each id once
    full = sum(w * F.softmax(z / 2.0, -1) for w, z in zip(weights, logits, strict=True))
    assert (merged <= full + 1e-3).all()  # a lower bound on the mean probability


def test_merge_of_one_teacher_is_that_teacher() -> None:
    logprobs, ids = teacher_top_k(torch.randn(N, L, V), 5, 1.0)
    merged_ids, merged_probs = merge_teachers([ids], [logprobs], [0.7])
    assert torch.equal(merged_ids, ids.long())
    assert torch.equal(merged_probs, logprobs.float().exp())


def test_teacher_top_k_is_the_tempered_log_softmax_top_k_in_chunks() -> None:
    hidden, head = student()
    logits = head(hidden).detach()
    values, ids = teacher_top_k(logits, 3, 2.0, chunk_tokens=5)
    expected_values, expected_ids = F.log_softmax(logits / 2.0, -1).topk(3, -1)
    assert values.dtype == torch.float16 and ids.dtype == torch.int32
    assert torch.equal(ids, expected_ids.int())
    torch.testing.assert_close(values.float(), expected_values, rtol=1e-3, atol=1e-3)
    from_hidden = teacher_top_k_hidden(hidden, head, 3, 2.0, chunk_tokens=4)
    assert torch.equal(from_hidden[1], ids) and torch.equal(from_hidden[0], values)


def test_top_k_targets_of_the_whole_vocabulary_give_the_full_kl() -> None:
    hidden, head = student()
    labels = padded_labels()
    teacher = torch.randn(N, L, V)
    logprobs, ids = teacher_top_k(teacher, V, 2.0)
    ids, probs = merge_teachers([ids.long()], [logprobs.float()])
    out = chunked_lm_loss(hidden, head, labels, ids, probs, temperature=2.0)
    expected = torch_divergence(head(hidden), teacher, "forward_kl", 2.0)[labels != -100].mean()
    assert out.soft is not None
    assert out.soft.item() == pytest.approx(expected.item(), abs=2e-3)  # float16 targets


def test_token_log_probs_are_log_softmax_at_the_labels_and_argmax_hits() -> None:
    hidden, head = student()
    labels = padded_labels()
    logprobs, correct = token_log_probs(hidden, head, labels, chunk_tokens=4)
    logits = head(hidden).detach()[labels != -100]
    targets = labels[labels != -100]
    expected = F.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(logprobs, expected)
    assert torch.equal(correct, logits.argmax(-1) == targets)
    assert logprobs.dtype == torch.float32 and correct.dtype == torch.bool


def test_under_bfloat16_autocast_the_loss_stays_float32_and_close() -> None:
    hidden, head = student()
    labels = padded_labels()
    ids, probs = sparse_targets()
    exact = chunked_lm_loss(hidden, head, labels, ids, probs, kind="jsd", temperature=2.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = chunked_lm_loss(hidden, head, labels, ids, probs, kind="jsd", temperature=2.0,
                              chunk_tokens=4)
    (grad,) = torch.autograd.grad(out.total, [hidden])
    assert out.total.dtype == torch.float32 and torch.isfinite(grad).all()
    assert out.total.item() == pytest.approx(exact.total.item(), rel=3e-2)
    assert out.total.item() != exact.total.item()  # the head did run in bfloat16


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("kind", KINDS)
def test_fast_and_exact_tail_rows_together_match_the_float64_reference(
    kind: str, temperature: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Most rows take the tail from the K logits over S (lse + log(1 − Σ_S q)) and fold its
    gradient into the softmax term; rows where S holds over 95 % of the student's mass, or
    whose present ids repeat, take the masked logsumexp. One batch with all three kinds of
    rows, in value and gradient, against the float64 reference."""
    monkeypatch.setattr(lm_losses, "ROWS", 2)
    torch.manual_seed(5)
    logits = torch.randn(1, 6, V)
    ids, probs = sparse_targets(k=3, seed=6)
    ids, probs = ids[:1], probs[:1]
    logits[0, 1, ids[0, 1, :3]] += 12.0  # S holds ~all of the student's mass: exact row
    logits[0, 4, ids[0, 4, :3]] += 8.0
    ids[0, 3, 1] = ids[0, 3, 0]  # a repeated present id: exact row
    probs[0, 3, :2] = torch.tensor([0.2, 0.1])
    logits.requires_grad_(True)
    labels = torch.randint(0, V, (1, 6))

    flat = (logits.detach()[0] / temperature).float()
    lse = torch.logsumexp(flat, -1)
    _, exact, _ = lm_losses._tail(flat, flat.gather(-1, ids[0, :, :-1]), ids[0, :, :-1],
                                  probs[0, :, :-1] > 0, lse)
    assert exact.tolist()[1] and exact.tolist()[3] and not exact.tolist()[0]

    out = dense_lm_loss(logits, labels, ids, probs, kind=kind, alpha=0.3,
                        temperature=temperature)
    expected = reference_loss(logits, labels, ids, probs, kind, temperature, 0.3)
    torch.testing.assert_close(out.total.double(), expected, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(out.total, [logits])
    (expected_grad,) = torch.autograd.grad(expected, [logits])
    torch.testing.assert_close(grad.double(), expected_grad.double(), rtol=1e-4, atol=1e-6)
