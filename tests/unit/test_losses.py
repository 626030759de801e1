"""kd_loss and soft_targets against values computed by hand (math, not torch's own KL)."""

import math

import pytest
import torch

from kdflow.losses import kd_loss, soft_targets

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
