"""kdflow.evaluation.stats: paired tests of two models on the same rows, against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdflow.evaluation.stats import (
    PairedTest,
    accuracy_spread,
    describe,
    difference_interval,
    mcnemar_exact,
    paired_accuracy_test,
    paired_mean_test,
    proportion_interval,
    ratio_interval,
    rows_needed,
    score_interval,
)


def table(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Correctness arrays with these 2x2 cell counts (row order does not matter)."""
    a = np.array([True] * both + [True] * a_only + [False] * b_only + [False] * neither)
    b = np.array([True] * both + [False] * a_only + [True] * b_only + [False] * neither)
    return a, b


# --- mcnemar_exact -----------------------------------------------------------------------------


def test_mcnemar_hand_values() -> None:
    assert mcnemar_exact(10, 0) == pytest.approx(2 * 0.5**10, rel=1e-12)
    assert mcnemar_exact(10, 0, "greater") == pytest.approx(0.5**10, rel=1e-12)
    assert mcnemar_exact(10, 0, "less") == pytest.approx(1.0)
    assert mcnemar_exact(0, 10, "less") == pytest.approx(0.5**10, rel=1e-12)
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 0, "greater") == 1.0
    # P(X >= 5 | X ~ Bin(7, 1/2)) = (21 + 7 + 1) / 128
    assert mcnemar_exact(5, 2, "greater") == pytest.approx(29 / 128, rel=1e-12)


@pytest.mark.parametrize(
    ("k", "m"), [(3, 10), (7, 10), (50, 60), (10, 60), (60_000, 119_000), (50_500, 100_000)]
)
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_mcnemar_matches_scipy_binomtest(k: int, m: int, alternative: str) -> None:
    from scipy.stats import binomtest

    expected = binomtest(k, m, 0.5, alternative=alternative).pvalue
    assert mcnemar_exact(k, m - k, alternative) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_mcnemar_large_counts_exact_log_space() -> None:
    # 60,000 vs 59,000: P(X >= 60000), X ~ Bin(119000, 1/2), summed exactly in log space.
    m, k = 119_000, 60_000
    log_m = math.lgamma(m + 1)
    logs = [log_m - math.lgamma(i + 1) - math.lgamma(m - i + 1) for i in range(k, m + 1)]
    top = max(logs)
    tail = math.exp(top + math.log(sum(math.exp(x - top) for x in logs)) - m * math.log(2))
    assert mcnemar_exact(k, m - k, "greater") == pytest.approx(tail, rel=1e-8)
    assert 1e-3 < mcnemar_exact(k, m - k, "greater") < 2e-3  # z ~ 2.9


def test_mcnemar_bad_input() -> None:
    with pytest.raises(ValueError, match="alternative"):
        mcnemar_exact(1, 2, "bigger")
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact(-1, 2)


# --- paired_accuracy_test ----------------------------------------------------------------------


def test_small_edge_is_not_significant() -> None:
    a, b = table(300, 5, 2, 53)  # 3 net rows better out of 360
    t = paired_accuracy_test(a, b)
    assert (t.n, t.a_only, t.b_only) == (360, 5, 2)
    assert t.estimate == pytest.approx(3 / 360)
    assert t.low < 0 < t.high
    assert t.p_value == pytest.approx(2 * 29 / 128)  # two-sided exact
    assert t.p_value > 0.05


def test_clear_edge_is_significant() -> None:
    a, b = table(1700, 50, 10, 240)  # 40 net rows better out of 2,000
    t = paired_accuracy_test(a, b)
    assert t.estimate == pytest.approx(0.02)
    assert 0 < t.low < t.estimate < t.high
    assert t.p_value < 0.001
    assert t.p_value == pytest.approx(mcnemar_exact(50, 10))


def test_interval_matches_normal_approximation_at_many_discordant_rows() -> None:
    a, b = table(1700, 50, 10, 240)
    t = paired_accuracy_test(a, b)
    half = 1.96 * accuracy_spread(50, 10, 2000) / math.sqrt(2000)
    assert t.low == pytest.approx(0.02 - half, abs=0.002)
    assert t.high == pytest.approx(0.02 + half, abs=0.002)
    # the conditional interval alone is too narrow at the top when one side wins most rows
    assert difference_interval(50, 10, 2000)[1] < 0.02 + half - 0.002


def test_score_interval_at_the_null_is_mcnemars_statistic() -> None:
    """T(0) = (b − c)/sqrt(b + c): 0 sits on the interval's edge when that is z."""
    # b − c = 1.96·sqrt(b + c) near b = 30, c = 14 (16 / sqrt(44) = 2.41 > 1.96: 0 excluded)
    low, _ = score_interval(30, 14, 500)
    assert low > 0
    low, _ = score_interval(24, 14, 500)  # 10 / sqrt(38) = 1.62 < 1.96: 0 included
    assert low < 0
    # identical models: no discordant row, yet the population may differ by about z²/n
    low, high = score_interval(0, 0, 360)
    assert high == pytest.approx(1.959964**2 / (360 + 1.959964**2), rel=0.05) and low == -high


def test_interval_is_the_clopper_pearson_interval_of_the_discordant_share() -> None:
    from scipy.stats import binomtest

    low, high = difference_interval(12, 3, 100)
    ci = binomtest(12, 15).proportion_ci(0.95, method="exact")
    assert low == pytest.approx(15 * (2 * ci.low - 1) / 100, rel=1e-9)
    assert high == pytest.approx(15 * (2 * ci.high - 1) / 100, rel=1e-9)


@pytest.mark.parametrize(("a_only", "b_only"), [(5, 0), (6, 0), (9, 2), (14, 4), (30, 15)])
def test_interval_excludes_zero_exactly_when_mcnemar_rejects(a_only: int, b_only: int) -> None:
    """The interval and the test never disagree (5 won, 0 lost: p = 0.0625, so 0 is in)."""
    a, b = table(300, a_only, b_only, 40)
    t = paired_accuracy_test(a, b)
    assert (t.low > 0) == (t.p_value < 0.05)


def test_interval_halves_when_rows_quadruple() -> None:
    small = paired_accuracy_test(*table(1700, 50, 10, 240))
    large = paired_accuracy_test(*table(6800, 200, 40, 960))
    assert large.estimate == pytest.approx(small.estimate)
    ratio = (large.high - large.low) / (small.high - small.low)
    assert 0.4 < ratio < 0.6


def test_identical_models() -> None:
    a = np.array([True, False, True, True, False] * 20)
    t = paired_accuracy_test(a, a.copy())
    assert (t.estimate, t.p_value, t.a_only, t.b_only) == (0.0, 1.0, 0, 0)
    assert t.low == -t.high and 0 < t.high < 0.05  # 100 rows cannot show they never differ


def test_proportion_interval() -> None:
    from scipy.stats import binomtest

    ci = binomtest(40, 50).proportion_ci(0.95, method="exact")
    assert proportion_interval(40, 50) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert proportion_interval(0, 10)[0] == 0.0 and proportion_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        proportion_interval(3, 2)


def test_accuracy_bad_input() -> None:
    with pytest.raises(ValueError, match="equal lengths"):
        paired_accuracy_test([True, False], [True])
    with pytest.raises(ValueError, match="empty"):
        paired_accuracy_test([], [])
    with pytest.raises(ValueError, match="confidence"):
        paired_accuracy_test([True], [False], confidence=95)


# --- paired_mean_test --------------------------------------------------------------------------


def test_paired_mean_known_shift() -> None:
    rng = np.random.default_rng(1)
    b = rng.normal(10.0, 3.0, size=500)
    a = b + 0.5 + rng.normal(0.0, 1.0, size=500)
    t = paired_mean_test(a, b, resamples=4000)
    assert t.estimate == pytest.approx(float(np.mean(a - b)), rel=1e-12)
    assert t.low < t.estimate < t.high
    half = 1.96 * float(np.std(a - b)) / math.sqrt(500)
    assert t.high - t.low == pytest.approx(2 * half, rel=0.1)
    assert t.a_only == int(np.sum(a > b)) and t.b_only == int(np.sum(b > a))
    assert t.p_value == pytest.approx(1 / 4001)  # no resample is <= 0
    # a margin above the effect makes p large; one below it leaves p small
    assert paired_mean_test(a, b, margin=0.7, resamples=4000).p_value > 0.9
    assert paired_mean_test(a, b, margin=0.3, resamples=4000).p_value < 0.01


def test_paired_mean_exact_shift_and_chunks() -> None:
    b = np.linspace(0.0, 1.0, 6000)
    t = paired_mean_test(b + 0.25, b, resamples=2500)  # 6000 * 2500 > 5e6: several chunks
    assert t.estimate == pytest.approx(0.25)
    assert t.low == pytest.approx(0.25) and t.high == pytest.approx(0.25)
    assert (t.a_only, t.b_only) == (6000, 0)
    assert paired_mean_test(b + 0.25, b, resamples=2500) == t
    assert paired_mean_test(b + 0.25, b, margin=0.3, resamples=2500).p_value == 1.0
    same = paired_mean_test(b, b.copy(), resamples=500)  # every resample ties the margin
    assert (same.estimate, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert (same.a_only, same.b_only) == (0, 0)


def test_paired_mean_bad_input() -> None:
    with pytest.raises(ValueError, match="equal lengths"):
        paired_mean_test([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="empty"):
        paired_mean_test([], [])
    with pytest.raises(ValueError, match="finite"):
        paired_mean_test([1.0, float("nan")], [1.0, 2.0])


# --- rows_needed, accuracy_spread --------------------------------------------------------------


def test_accuracy_spread() -> None:
    assert accuracy_spread(5, 2, 360) == pytest.approx(math.sqrt(7 / 360 - (3 / 360) ** 2))
    assert accuracy_spread(0, 0, 10) == 0.0
    a, b = table(300, 25, 12, 63)
    assert accuracy_spread(25, 12, 400) == pytest.approx(float(np.std(a * 1.0 - b)), rel=1e-12)
    with pytest.raises(ValueError):
        accuracy_spread(5, 6, 10)


def test_rows_needed() -> None:
    spread = accuracy_spread(5, 2, 360)
    n = rows_needed(3 / 360, spread, 0.0)
    assert n is not None and n > 360
    assert n == math.ceil(1.959963984540054**2 * spread**2 / (3 / 360) ** 2)
    # hand example: 1.96^2 * 1^2 / 0.1^2 = 384.1 -> 385
    assert rows_needed(0.1, 1.0, 0.0) == 385
    assert rows_needed(0.3, 1.0, 0.2) == 385
    assert rows_needed(0.01, 0.2, 0.02) is None
    assert rows_needed(0.02, 0.2, 0.02) is None
    n99 = rows_needed(0.1, 1.0, 0.0, confidence=0.99)
    assert n99 is not None and n99 > 385


# --- ratio_interval ----------------------------------------------------------------------------


def test_ratio_interval() -> None:
    a, b = table(700, 80, 40, 180)  # acc(a) = 0.78, acc(b) = 0.74
    estimate, low, high = ratio_interval(a, b)
    assert estimate == pytest.approx(0.78 / 0.74)
    assert low < estimate < high
    assert low > 1.0  # 40 net rows of 1,000 is clear
    assert ratio_interval(a, b) == (estimate, low, high)
    same, lo, hi = ratio_interval(a, a.copy())
    assert (same, lo, hi) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="no correct rows"):
        ratio_interval([True, False], [False, False])


# --- describe, to_dict -------------------------------------------------------------------------

FIXED = PairedTest(
    n=2000,
    estimate=0.021,
    low=0.008,
    high=0.034,
    confidence=0.95,
    p_value=0.00123456,
    a_only=62,
    b_only=20,
)


def test_describe() -> None:
    assert describe(FIXED, "student vs baseline") == (
        "student vs baseline: +2.1 points, 95% CI [+0.8, +3.4], p = 0.0012, n = 2,000"
    )
    worse = PairedTest(123456, -0.0004, -0.012, 0.011, 0.9, 0.00001, 3, 4)
    assert describe(worse, "a vs b", unit="pp") == (
        "a vs b: +0.0 pp, 90% CI [-1.2, +1.1], p < 0.0001, n = 123,456"
    )
    nats = PairedTest(10, -1.25, -2.0, -0.5, 0.95, 0.97, 1, 9)
    assert describe(nats, "x vs y", unit="nats", scale=1.0) == (
        "x vs y: -1.2 nats, 95% CI [-2.0, -0.5], p = 0.97, n = 10"
    )


def test_to_dict() -> None:
    d = FIXED.to_dict()
    assert d == {
        "n": 2000,
        "estimate": 0.021,
        "low": 0.008,
        "high": 0.034,
        "confidence": 0.95,
        "p_value": 0.001235,
        "a_only": 62,
        "b_only": 20,
    }
    assert isinstance(d["n"], int) and isinstance(d["estimate"], float)
