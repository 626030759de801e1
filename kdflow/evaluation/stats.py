"""Paired comparisons of two models scored on the same test rows, for the promotion gates.

Both models see every row, so the comparison is paired: only the rows where they disagree
carry information (McNemar 1947). Accuracy differences use McNemar's exact test and the exact
interval it inverts (`paired_accuracy_test`). Continuous paired values (a causal LM's
per-block log-likelihoods) and ratios (retention) use paired bootstrap percentile intervals
(Efron & Tibshirani 1993, ch. 13); for binary outcomes a resample of rows is drawn as a
multinomial draw of the four cells of the 2x2 agreement table, which is the same
distribution as resampling rows and costs O(resamples) instead of O(n * resamples).
Differences are a - b in the metric's own units (a fraction for accuracy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

_CHUNK_ELEMENTS = 5_000_000  # bound on n * resamples held at once by paired_mean_test


@dataclass(frozen=True)
class PairedTest:
    """A paired difference a - b with its interval and a one-sided p-value (H1: a - b > margin).

    `a_only`/`b_only` are the discordant rows (a right and b wrong, and the reverse); for
    continuous values they count the rows where a > b and where b > a.
    """

    n: int
    estimate: float
    low: float
    high: float
    confidence: float
    p_value: float
    a_only: int
    b_only: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "estimate": round(self.estimate, 6),
            "low": round(self.low, 6),
            "high": round(self.high, 6),
            "confidence": round(self.confidence, 6),
            "p_value": round(self.p_value, 6),
            "a_only": self.a_only,
            "b_only": self.b_only,
        }


def mcnemar_exact(a_only: int, b_only: int, alternative: str = "two-sided") -> float:
    """McNemar's exact test: X ~ Binomial(a_only + b_only, 1/2) under H0 (equal accuracy).

    "greater" (a better) is P(X >= a_only), "less" is P(X <= a_only), "two-sided" is
    min(1, 2 * min of the two tails). The tails come from scipy's binomial survival and
    distribution functions (regularised incomplete beta), exact to double precision for
    counts in the hundreds of thousands; no normal approximation.
    """
    if a_only < 0 or b_only < 0:
        raise ValueError(f"discordant counts must be >= 0, got {a_only} and {b_only}")
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be two-sided, greater or less, not {alternative!r}")
    m = a_only + b_only
    if m == 0:
        return 1.0
    from scipy.stats import binom  # lazily, like the rest of kdflow's scipy uses

    greater = float(binom.sf(a_only - 1, m, 0.5))
    less = float(binom.cdf(a_only, m, 0.5))
    if alternative == "greater":
        return min(1.0, greater)
    if alternative == "less":
        return min(1.0, less)
    return min(1.0, 2.0 * min(greater, less))


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")


def _check_table(a_only: int, b_only: int, n: int) -> None:
    """The discordant counts of a 2x2 table of n paired rows."""
    if n <= 0 or a_only < 0 or b_only < 0 or a_only + b_only > n:
        raise ValueError(f"need n > 0 and 0 <= a_only + b_only <= n; got {a_only}, {b_only}, {n}")


def _check_common(confidence: float, resamples: int) -> None:
    _check_confidence(confidence)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")


def _pair(a: Any, b: Any, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    x: np.ndarray = np.asarray(a, dtype=dtype)
    y: np.ndarray = np.asarray(b, dtype=dtype)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"expected 1-D arrays, got shapes {x.shape} and {y.shape}")
    if x.shape != y.shape:
        raise ValueError(f"paired arrays must have equal lengths, got {x.size} and {y.size}")
    if x.size == 0:
        raise ValueError("paired arrays are empty: there is nothing to compare")
    return x, y


def _table_draws(
    a_correct: Any, b_correct: Any, resamples: int, seed: int
) -> tuple[int, np.ndarray, np.ndarray]:
    """The 2x2 table [both, a_only, b_only, neither] and `resamples` multinomial redraws of it."""
    a, b = _pair(a_correct, b_correct, bool)
    n = int(a.size)
    counts = np.array([(a & b).sum(), (a & ~b).sum(), (~a & b).sum(), (~a & ~b).sum()])
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=resamples)
    return n, counts, draws


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    low, high = np.quantile(values, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return float(low), float(high)


def _bootstrap_p(values: np.ndarray, margin: float) -> float:
    """One-sided bootstrap p for H1: difference > margin, (1 + #{d* <= margin}) / (1 + B)."""
    return float((1 + np.count_nonzero(values <= margin)) / (1 + values.size))


def paired_accuracy_test(
    a_correct: Any,
    b_correct: Any,
    confidence: float = 0.95,
) -> PairedTest:
    """acc(a) - acc(b) = (a_only - b_only) / n on the same rows: McNemar's exact test, and
    an interval that agrees with it (`accuracy_interval`).

    The p-value is McNemar's exact two-sided test of equal accuracy. Both are exact or
    conservative at the few discordant rows gates often see, where a bootstrap percentile
    interval is too narrow (5 rows won, 0 lost: the bootstrap's 95 % interval excludes 0,
    McNemar's exact p is 0.0625).
    """
    a, b = _pair(a_correct, b_correct, bool)
    n = int(a.size)
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    low, high = accuracy_interval(a_only, b_only, n, confidence)
    p = mcnemar_exact(a_only, b_only, "two-sided")
    return PairedTest(n, (a_only - b_only) / n, low, high, confidence, p, a_only, b_only)


def accuracy_interval(a_only: int, b_only: int, n: int, confidence: float = 0.95
                      ) -> tuple[float, float]:
    """The interval of a paired accuracy difference the gates decide on: the wider, at each
    end, of Tango's score interval (`score_interval`) and the exact conditional interval
    (`difference_interval`).

    Tango's is the interval non-inferiority studies of paired proportions use: its width is
    right when one model wins most discordant rows, where the conditional interval is too
    narrow (it holds their number fixed). The conditional one is the interval McNemar's
    exact test inverts, right at few discordant rows, where the score interval is too narrow.
    Their union excludes 0 only when McNemar's exact test rejects at 1 - confidence.
    """
    t_low, t_high = score_interval(a_only, b_only, n, confidence)
    e_low, e_high = difference_interval(a_only, b_only, n, confidence)
    return min(t_low, e_low), max(t_high, e_high)


def score_interval(a_only: int, b_only: int, n: int, confidence: float = 0.95
                   ) -> tuple[float, float]:
    """Tango's score interval of a paired difference of proportions (Tango 1998, Statistics in
    Medicine 17:891): the Δ where |T(Δ)| < z, with
    T(Δ) = (b − c − nΔ) / sqrt(n·(2·q(Δ) + Δ(1 − Δ))), b, c the discordant counts and q(Δ) the
    maximum-likelihood share of c-rows under Δ; each end found by bisection (T falls with Δ).
    """
    _check_confidence(confidence)
    _check_table(a_only, b_only, n)
    z = NormalDist().inv_cdf((1.0 + confidence) / 2.0)
    b, c = float(a_only), float(b_only)

    def score(delta: float) -> float:
        w = -b - c + (2 * n - b + c) * delta
        q = (math.sqrt(max(w * w + 8 * n * c * delta * (1 - delta), 0.0)) - w) / (4 * n)
        var = n * (2 * q + delta * (1 - delta))
        return (b - c - n * delta) / math.sqrt(max(var, 1e-300))

    def root(target: float, lo: float, hi: float) -> float:
        for _ in range(200):  # score(lo) >= target >= score(hi)
            mid = (lo + hi) / 2
            if score(mid) > target:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    estimate = (b - c) / n
    low = -1.0 if score(-1.0 + 1e-12) <= z else root(z, -1.0 + 1e-12, estimate)
    high = 1.0 if score(1.0 - 1e-12) >= -z else root(-z, estimate, 1.0 - 1e-12)
    return low, high


def difference_interval(a_only: int, b_only: int, n: int, confidence: float = 0.95
                        ) -> tuple[float, float]:
    """The exact conditional interval of a paired accuracy difference.

    Given the m = a_only + b_only discordant rows, a_only ~ Binomial(m, θ) and the difference
    is m·(2θ − 1)/n; the Clopper-Pearson interval of θ (Clopper & Pearson 1934) maps to the
    difference's. It is the interval McNemar's exact test inverts (conditional on m, as the
    test is). No discordant rows: [0, 0].
    """
    _check_confidence(confidence)
    _check_table(a_only, b_only, n)
    m = a_only + b_only
    if m == 0:
        return 0.0, 0.0
    low, high = proportion_interval(a_only, m, confidence)
    return m * (2 * low - 1) / n, m * (2 * high - 1) / n


def proportion_interval(successes: int, n: int, confidence: float = 0.95
                        ) -> tuple[float, float]:
    """Clopper-Pearson interval of a proportion (an agreement rate): exact, conservative."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0; got {successes}, {n}")
    from scipy.stats import beta

    alpha = 1.0 - confidence
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.ppf(1 - alpha / 2, successes + 1, n - successes))
    return low, high


def paired_mean_test(
    a: Any,
    b: Any,
    confidence: float = 0.95,
    margin: float = 0.0,
    resamples: int = 10_000,
    seed: int = 0,
) -> PairedTest:
    """mean(a - b) of paired per-row values, a paired bootstrap interval over rows, and the
    one-sided bootstrap p-value for H1: mean difference > margin.

    Row indices are resampled with replacement in chunks of at most ~5e6 indices, so memory
    stays bounded for large n; the draws depend only on the seed, n and resamples.
    """
    _check_common(confidence, resamples)
    x, y = _pair(a, b, float)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("paired values must be finite (no NaN or inf)")
    d = x - y
    n = int(d.size)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    means = np.empty(resamples)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        means[start : start + size] = d[rng.integers(0, n, size=(size, n))].mean(axis=1)
    low, high = _interval(means, confidence)
    return PairedTest(
        n,
        float(d.mean()),
        low,
        high,
        confidence,
        _bootstrap_p(means, margin),
        int(np.count_nonzero(d > 0)),
        int(np.count_nonzero(d < 0)),
    )


def accuracy_spread(a_only: int, b_only: int, n: int) -> float:
    """Per-row standard deviation of the paired difference of two binary outcomes.

    With pi_d = (a_only + b_only) / n the discordant share and d = (a_only - b_only) / n the
    difference, Var = pi_d - d^2 (the variance behind McNemar sample-size formulas, e.g.
    Connor 1987, Biometrics 43:207).
    """
    _check_table(a_only, b_only, n)
    pi_d, d = (a_only + b_only) / n, (a_only - b_only) / n
    return math.sqrt(max(0.0, pi_d - d * d))


def rows_needed(
    estimate: float, spread: float, margin: float, confidence: float = 0.95
) -> int | None:
    """Paired rows at which an effect of this size would put the interval's lower bound past
    the margin: n = ceil(z^2 * spread^2 / (estimate - margin)^2), z the two-sided normal
    critical value (1.96 at 0.95). None when estimate <= margin: no n concludes in favour.
    """
    _check_confidence(confidence)
    if spread < 0:
        raise ValueError(f"spread must be >= 0, got {spread}")
    if estimate <= margin:
        return None
    z = NormalDist().inv_cdf((1.0 + confidence) / 2.0)
    return max(1, math.ceil((z * spread / (estimate - margin)) ** 2))


def ratio_interval(
    a_correct: Any,
    b_correct: Any,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """acc(a) / acc(b) (a "retention" ratio) with a paired bootstrap percentile interval.

    Resampled tables come from the same multinomial 2x2 draw as `paired_accuracy_test`;
    acc(a)/acc(b) = (both + a_only) / (both + b_only). Draws with acc(b) = 0 are dropped.
    Returns (estimate, low, high).
    """
    _check_common(confidence, resamples)
    _, counts, draws = _table_draws(a_correct, b_correct, resamples, seed)
    if counts[0] + counts[2] == 0:
        raise ValueError("model b has no correct rows: the accuracy ratio is undefined")
    estimate = float((counts[0] + counts[1]) / (counts[0] + counts[2]))
    denominator = draws[:, 0] + draws[:, 2]
    keep = denominator > 0
    ratios = (draws[keep, 0] + draws[keep, 1]) / denominator[keep]
    low, high = _interval(ratios, confidence)
    return estimate, low, high


def _signed(value: float, scale: float) -> str:
    return f"{round(value * scale, 1) + 0.0:+.1f}"  # + 0.0 turns -0.0 into 0.0


def describe(test: PairedTest, what: str, unit: str = "points", scale: float = 100.0) -> str:
    """One line, e.g. "student vs baseline: +2.1 points, 95% CI [+0.8, +3.4], p = 0.001,
    n = 2,000"; p has two significant digits, or reads "< 0.0001"."""
    p = "< 0.0001" if test.p_value < 0.0001 else f"= {test.p_value:.2g}"
    return (
        f"{what}: {_signed(test.estimate, scale)} {unit}, {test.confidence * 100:g}% CI "
        f"[{_signed(test.low, scale)}, {_signed(test.high, scale)}], p {p}, n = {test.n:,}"
    )
