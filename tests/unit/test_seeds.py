"""--seeds: the seed chosen, beats_baseline decided on every seed together, and the seeds'
record in words, on hand-made test rows whose answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kdflow.config import GateConfig
from kdflow.evaluation.gates import pooled_beats_baseline
from kdflow.evaluation.seeds import SeedRun, choose, runs_of
from kdflow.evaluation.stats import paired_accuracy_test
from kdflow.report.seeds import seeds_lines, seeds_sentence


def seed_rows(n: int, won: int, lost: int, both: float = 0.9, shift: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
    """One seed's test rows: the student alone right on `won` rows, the baseline alone on
    `lost`, both right on a share `both` of the rest (rows moved by `shift`)."""
    student, baseline = np.zeros(n, bool), np.zeros(n, bool)
    student[:won] = True
    baseline[won:won + lost] = True
    rest = np.arange(won + lost, n)
    agree = rest[: int(both * rest.size)]
    student[agree] = baseline[agree] = True
    return np.roll(student, shift), np.roll(baseline, shift)


def pooled(*seeds: tuple[np.ndarray, np.ndarray], margin: float = 0.0) -> object:
    student = np.array([s for s, _ in seeds])
    baseline = np.array([b for _, b in seeds])
    return pooled_beats_baseline(GateConfig(min_gain_over_baseline=margin), student, baseline,
                                 list(range(len(seeds))))


def test_three_small_gains_are_inconclusive_alone_and_conclusive_together() -> None:
    # 12 won, 4 lost of 360 on each seed: McNemar's p = 0.077, inconclusive alone; the
    # same rows on three seeds are still one test split, but the seeds' different rows
    # (shifted) add evidence: 36 won, 12 lost.
    seeds = [seed_rows(360, 12, 4, shift=40 * k) for k in range(3)]
    alone = paired_accuracy_test(*seeds[0])
    assert alone.low < 0 < alone.high  # one seed cannot tell
    gate = pooled(*seeds)
    assert gate.status == "passed" and gate.value == pytest.approx(8 / 360, abs=1e-4)
    assert gate.evidence["n"] == 360 and gate.evidence["low"] > 0
    assert "over 3 seeds" in gate.detail and "+2.2, +2.2, +2.2 points" in gate.detail


def test_a_failing_seed_does_not_sink_a_real_gain_but_a_losing_recipe_fails() -> None:
    good = [seed_rows(2000, 60, 20, shift=300 * k) for k in range(2)]
    bad = seed_rows(2000, 20, 35, shift=900)  # this seed alone: the student is worse
    gate = pooled(*good, bad)
    assert gate.status == "passed", gate.detail
    losing = pooled(*[seed_rows(2000, 10, 60, shift=300 * k) for k in range(3)])
    assert losing.status == "failed" and losing.evidence["high"] < 0


def test_noise_over_seeds_is_inconclusive_and_says_how_many_rows_it_would_need() -> None:
    gate = pooled(seed_rows(360, 5, 4), seed_rows(360, 4, 5, shift=50),
                  seed_rows(360, 6, 4, shift=100))
    assert gate.status == "inconclusive" and not gate.passed
    assert "inconclusive at 95%" in gate.detail


def test_the_margin_is_the_line_the_interval_must_clear() -> None:
    seeds = [seed_rows(2000, 60, 20, shift=300 * k) for k in range(3)]  # +2 points each
    assert pooled(*seeds).status == "passed"
    assert pooled(*seeds, margin=0.05).status == "failed"


def test_the_best_seed_on_validation_is_chosen_the_earlier_on_a_tie() -> None:
    runs = [SeedRun(0, Path("a"), Path("b"), 0.91), SeedRun(1, Path("c"), Path("d"), 0.95),
            SeedRun(2, Path("e"), Path("f"), 0.95), SeedRun(3, Path("g"), Path("h"), None)]
    assert choose(runs).seed == 1
    assert choose([SeedRun(7, Path("x"), Path("y"), None)]).seed == 7
    with pytest.raises(ValueError, match="no seed"):
        choose([])


def test_runs_of_finds_the_chosen_seed_in_the_artifacts_and_the_rest_in_seed_models() -> None:
    record = {"chosen": 2, "runs": [{"seed": 0, "val_accuracy": 0.9, "folder": "seed0"},
                                    {"seed": 2, "val_accuracy": 0.95, "folder": None}]}
    runs = runs_of(record, Path("/s"), Path("/b"), Path("/seeds"))
    assert runs == [SeedRun(0, Path("/seeds/seed0/student"), Path("/seeds/seed0/baseline"), 0.9),
                    SeedRun(2, Path("/s"), Path("/b"), 0.95)]
    assert runs_of(None, Path("/s"), Path("/b"), Path("/seeds")) == []


def test_the_seeds_in_words_and_in_the_report() -> None:
    summary = {"seeds": {
        "seeds": [0, 1], "chosen": 1, "chosen_by": "best validation accuracy",
        "metric": "accuracy", "student": {"mean": 0.95, "std": 0.01},
        "baseline": {"mean": 0.94, "std": 0.005}, "gain": {"mean": 0.01, "std": 0.002},
        "won": 1, "runs": [
            {"seed": 0, "val_accuracy": 0.9, "chosen": False, "student": 0.94,
             "baseline": 0.94, "gain": 0.0, "decision": "inconclusive", "low": -0.01,
             "high": 0.01},
            {"seed": 1, "val_accuracy": 0.92, "chosen": True, "student": 0.96,
             "baseline": 0.94, "gain": 0.02, "decision": "passed", "low": 0.005,
             "high": 0.035}]}}
    sentence = seeds_sentence(summary)
    assert sentence is not None and sentence.startswith("seeds 0 1: student accuracy 0.9500")
    assert "gain +1.0 points" in sentence and "1 of 2 beat their baseline alone" in sentence
    assert "seed 1 judged by the other gates" in sentence
    text = "\n".join(seeds_lines(summary))
    assert "## Seeds" in text and "| 1 (chosen) | 0.9200 | 0.9600 | 0.9400 | +2.0 points |" in text
    assert seeds_sentence({}) is None and seeds_lines({}) == []
