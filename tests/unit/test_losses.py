"""kd_loss and soft_targets against values computed by hand (math, not torch's own KL)."""

import math

import pytest
import torch

from kdflow.distill.losses import (
    attention_loss,
    entropy,
    hint_loss,
    kd_loss,
    kd_objective,
    layer_map,
    merge_heads,
    separate_kd_loss,
    soft_targets,
)

STUDENT = [[1.0, 2.0, 3.0], [1.0, 0.0, -1.0]]
LABELS = [2, 0]
TEACHER_PROBS = [[0.1, 0.2, 0.7], [0.5, 0.3, 0.2]]


def softmax(row, temperature=1.0):
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def hand_ce(logits, labels):
    return sum(-math.log(softmax(row)[y]) for row, y in zip(logits, labels, strict=True)) / len(
        labels
    )


def hand_kl(teacher_probs, logits, temperature):
    """KL(p_T ‖ softmax(s/T)) summed over classes, averaged over samples (batchmean)."""
    total = 0.0
    for p_row, s_row in zip(teacher_probs, logits, strict=True):
        q_row = softmax(s_row, temperature)
        total += sum(p * (math.log(p) - math.log(q)) for p, q in zip(p_row, q_row, strict=True))
    return total / len(logits)


def run_kd(temperature, alpha, teacher_probs=TEACHER_PROBS):
    probs = None if teacher_probs is None else torch.tensor(teacher_probs)
    return kd_loss(torch.tensor(STUDENT), torch.tensor(LABELS), probs, temperature, alpha)


def test_alpha_one_gives_plain_cross_entropy():
    total, _, _ = run_kd(temperature=2.0, alpha=1.0)
    assert total.item() == pytest.approx(hand_ce(STUDENT, LABELS), rel=1e-5)


def test_alpha_zero_gives_only_t_squared_kl():
    total, _, _ = run_kd(temperature=2.0, alpha=0.0)
    assert total.item() == pytest.approx(4.0 * hand_kl(TEACHER_PROBS, STUDENT, 2.0), rel=1e-5)


def test_loss_mixes_ce_and_t_squared_kl_by_alpha():
    total, _, _ = run_kd(temperature=2.0, alpha=0.25)
    expected = 0.25 * hand_ce(STUDENT, LABELS) + 0.75 * 4.0 * hand_kl(TEACHER_PROBS, STUDENT, 2.0)
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_soft_term_is_scaled_by_temperature_squared():
    total, _, soft = run_kd(temperature=3.0, alpha=0.0)
    assert soft.item() == pytest.approx(hand_kl(TEACHER_PROBS, STUDENT, 3.0), rel=1e-5)
    assert total.item() == pytest.approx(9.0 * soft.item(), rel=1e-6)


def test_parts_are_returned_unweighted():
    _, hard, soft = run_kd(temperature=2.0, alpha=0.25)
    assert hard.item() == pytest.approx(hand_ce(STUDENT, LABELS), rel=1e-5)
    assert soft.item() == pytest.approx(hand_kl(TEACHER_PROBS, STUDENT, 2.0), rel=1e-5)


def test_without_teacher_probs_loss_is_cross_entropy_whatever_alpha():
    total, hard, soft = run_kd(temperature=4.0, alpha=0.0, teacher_probs=None)
    assert total.item() == pytest.approx(hand_ce(STUDENT, LABELS), rel=1e-5)
    assert hard.item() == pytest.approx(total.item())
    assert soft.item() == 0.0


def test_kl_is_zero_when_student_matches_teacher():
    teacher = [softmax(row, 2.0) for row in STUDENT]
    _, _, soft = run_kd(temperature=2.0, alpha=0.0, teacher_probs=teacher)
    assert soft.item() == pytest.approx(0.0, abs=1e-6)


TEACHER_A = [[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]
TEACHER_B = [[0.0, 0.0, 2.0], [1.0, 1.0, 1.0]]


def ensemble(mode, temperature=2.0, weights=None):
    logits = [torch.tensor(TEACHER_A), torch.tensor(TEACHER_B)]
    return soft_targets(logits, temperature, mode=mode, weights=weights).tolist()


def assert_rows_close(actual, expected):
    for a_row, e_row in zip(actual, expected, strict=True):
        assert a_row == pytest.approx(e_row, rel=1e-5)


def test_mean_probs_averages_the_teachers_tempered_probabilities():
    expected = [
        [(a + b) / 2 for a, b in zip(softmax(ra, 2.0), softmax(rb, 2.0), strict=True)]
        for ra, rb in zip(TEACHER_A, TEACHER_B, strict=True)
    ]
    assert_rows_close(ensemble("mean_probs"), expected)


def test_mean_logits_takes_softmax_of_the_averaged_logits():
    expected = [
        softmax([(a + b) / 2 for a, b in zip(ra, rb, strict=True)], 2.0)
        for ra, rb in zip(TEACHER_A, TEACHER_B, strict=True)
    ]
    assert_rows_close(ensemble("mean_logits"), expected)


def test_weighted_probs_normalises_the_weights():
    expected = [
        [0.75 * a + 0.25 * b for a, b in zip(softmax(ra, 2.0), softmax(rb, 2.0), strict=True)]
        for ra, rb in zip(TEACHER_A, TEACHER_B, strict=True)
    ]
    assert_rows_close(ensemble("weighted_probs", weights=[3.0, 1.0]), expected)


def test_weighted_probs_without_weights_equals_mean_probs():
    assert_rows_close(ensemble("weighted_probs"), ensemble("mean_probs"))


def test_soft_targets_rows_sum_to_one_in_every_mode():
    for mode in ("mean_probs", "weighted_probs", "mean_logits"):
        for row in ensemble(mode, weights=[0.9, 0.1]):
            assert sum(row) == pytest.approx(1.0, abs=1e-6)


def test_unknown_ensemble_mode_is_refused_with_the_known_modes():
    with pytest.raises(ValueError, match="unknown ensemble mode 'median'.*mean_probs"):
        ensemble("median")


def test_soft_targets_without_teachers_is_refused():
    with pytest.raises(ValueError, match="at least one teacher"):
        soft_targets([], 2.0)



def test_kd_objective_has_the_gradient_of_kd_loss_and_differs_by_the_teacher_entropy():
    torch.manual_seed(0)
    s = torch.randn(8, 10, requires_grad=True)
    y = torch.randint(0, 10, (8,))
    p = torch.softmax(torch.randn(8, 10), -1)
    for temperature, alpha in [(2.0, 0.2), (1.0, 0.5), (4.0, 0.0)]:
        loss, hard, kl = kd_loss(s, y, p, temperature, alpha)
        objective, hard2, cross = kd_objective(s, y, p, temperature, alpha)
        (g1,) = torch.autograd.grad(loss, s)
        (g2,) = torch.autograd.grad(objective, s)
        torch.testing.assert_close(g1, g2)
        h = entropy(p).mean()
        scale = (1 - alpha) * temperature**2
        assert float((objective - loss).detach()) == pytest.approx(float(scale * h), abs=1e-5)
        assert float(hard2) == pytest.approx(float(hard))
        assert float(cross - h) == pytest.approx(float(kl), abs=1e-5)


# ------------------------------------------------------------------ multi-teacher, separate


PROBS_A = [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]
PROBS_B = [[0.1, 0.1, 0.8], [0.5, 0.4, 0.1]]


def run_separate(alpha, weights):
    return separate_kd_loss(
        torch.tensor(STUDENT),
        torch.tensor(LABELS),
        [torch.tensor(PROBS_A), torch.tensor(PROBS_B)],
        2.0,
        alpha,
        weights,
    )


def test_separate_kl_sums_each_teachers_kl_by_its_normalised_weight():
    total, hard, soft = run_separate(alpha=0.5, weights=[3.0, 1.0])
    kl_a, kl_b = hand_kl(PROBS_A, STUDENT, 2.0), hand_kl(PROBS_B, STUDENT, 2.0)
    assert soft.item() == pytest.approx(0.75 * kl_a + 0.25 * kl_b, rel=1e-5)
    assert hard.item() == pytest.approx(hand_ce(STUDENT, LABELS), rel=1e-5)
    expected = 0.5 * hand_ce(STUDENT, LABELS) + 0.5 * 4.0 * (0.75 * kl_a + 0.25 * kl_b)
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_separate_kl_exceeds_the_averaged_kl_by_the_teachers_disagreement():
    """Σ w KL(p_k‖q) = KL(p̄‖q) + H(p̄) − Σ w H(p_k): same gradient, larger value."""
    def h(rows):
        return sum(-sum(p * math.log(p) for p in row) for row in rows) / len(rows)

    mixed = [[0.5 * a + 0.5 * b for a, b in zip(ra, rb, strict=True)]
             for ra, rb in zip(PROBS_A, PROBS_B, strict=True)]
    _, _, separate = run_separate(alpha=0.0, weights=None)
    _, _, averaged = kd_loss(torch.tensor(STUDENT), torch.tensor(LABELS),
                             torch.tensor(mixed), 2.0, 0.0)
    gap = h(mixed) - 0.5 * (h(PROBS_A) + h(PROBS_B))
    assert gap > 0.05
    assert separate.item() == pytest.approx(averaged.item() + gap, rel=1e-5)


def test_separate_kl_has_the_gradient_of_kl_to_the_weighted_mean():
    grads = []
    for separate in (True, False):
        logits = torch.tensor(STUDENT, requires_grad=True)
        if separate:
            loss, _, _ = separate_kd_loss(logits, torch.tensor(LABELS), [
                torch.tensor(PROBS_A), torch.tensor(PROBS_B)], 2.0, 0.3, [0.2, 0.8])
        else:
            mixed = 0.2 * torch.tensor(PROBS_A) + 0.8 * torch.tensor(PROBS_B)
            loss, _, _ = kd_loss(logits, torch.tensor(LABELS), mixed, 2.0, 0.3)
        loss.backward()
        grads.append(logits.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_separate_kl_refuses_a_weight_count_that_differs_from_the_teachers():
    with pytest.raises(ValueError, match="1 weights for 2 teachers"):
        run_separate(alpha=0.0, weights=[1.0])


# --------------------------------------------------------------------------- FitNets hints


def test_hint_loss_is_the_mean_squared_error_averaged_over_pairs():
    student = [torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[3.0]])]
    teacher = [torch.tensor([[0.0, 4.0], [1.0, 0.0]]), torch.tensor([[1.0]])]
    # pair 1: (1 + 4 + 1 + 0) / 4 = 1.5; pair 2: 4; mean 2.75
    assert hint_loss(student, teacher).item() == pytest.approx(2.75)


def test_hint_loss_sends_no_gradient_to_the_teacher():
    student = torch.tensor([[1.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0]], requires_grad=True)
    hint_loss([student], [teacher]).backward()
    assert student.grad.tolist() == [[1.0, 2.0]]  # d/ds mean (s - t)^2 = (s - t)
    assert teacher.grad is None


def test_hint_loss_refuses_unpaired_features():
    with pytest.raises(ValueError, match="1 student and 2 teacher"):
        hint_loss([torch.zeros(1)], [torch.zeros(1), torch.zeros(1)])


# ------------------------------------------------------------------ attention (MiniLM)


def test_layer_map_pairs_student_layers_uniformly_and_always_the_last_ones():
    assert layer_map(2, 4) == [1, 3]
    assert layer_map(3, 12) == [3, 7, 11]
    assert layer_map(4, 4) == [0, 1, 2, 3]
    assert layer_map(4, 2) == [0, 0, 1, 1]


def test_merge_heads_averages_groups_of_heads_or_all_of_them():
    maps = torch.arange(4.0).reshape(1, 4, 1, 1)
    assert merge_heads(maps, 2).flatten().tolist() == [0.5, 2.5]
    assert merge_heads(maps, 3).flatten().tolist() == [1.5]
    assert merge_heads(maps, 4) is maps


def hand_row_kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def test_attention_loss_is_the_mean_kl_of_each_query_rows_distribution():
    teacher = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])  # B=1, H=1, L=2
    student = torch.tensor([[[[0.25, 0.75], [0.5, 0.5]]]])
    expected = (hand_row_kl([0.5, 0.5], [0.25, 0.75]) + hand_row_kl([1.0, 0.0], [0.5, 0.5])) / 2
    assert attention_loss([student], [teacher]).item() == pytest.approx(expected, rel=1e-6)


def test_attention_loss_merges_teacher_heads_when_the_counts_differ():
    # Teacher has 2 heads, student 1: the student matches the teacher heads' average.
    teacher = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # B=1, H=2, L... one query row
    teacher = teacher.expand(1, 2, 2, 2).contiguous()
    student = torch.full((1, 1, 2, 2), 0.5)
    assert attention_loss([student], [teacher]).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.tensor([[[[0.8, 0.2], [0.8, 0.2]]]])
    expected = hand_row_kl([0.5, 0.5], [0.8, 0.2])
    assert attention_loss([student], [teacher]).item() == pytest.approx(expected, rel=1e-6)


def test_attention_loss_refuses_different_token_counts():
    with pytest.raises(ValueError, match="student attends over 2 tokens, teacher over 4"):
        attention_loss([torch.full((1, 1, 2, 2), 0.5)], [torch.full((1, 1, 4, 4), 0.25)])


def test_cosine_hidden_loss_is_one_minus_the_mean_token_cosine() -> None:
    from kdflow.distill.losses import cosine_hidden_loss

    teacher = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # B=1, L=2, D=2
    student = torch.tensor([[[1.0, 0.0], [3.0, 0.0]]], requires_grad=True)
    loss = cosine_hidden_loss([student], [teacher])
    assert loss.item() == pytest.approx(((1 - 1) + (1 - 0)) / 2)  # cos 1 and cos 0
    loss.backward()
    assert student.grad is not None
    same = cosine_hidden_loss([2 * teacher], [teacher])
    assert same.item() == pytest.approx(0.0, abs=1e-6)  # direction, not length
    with pytest.raises(ValueError):
        cosine_hidden_loss([], [])
