"""The evaluate step of a causal-lm run in this process (the e2e run is
tests/pipelines/test_local_run_lm.py): a GPT-2 teacher trained from its config, a student
with half its layers distilled without Ray, every model's perplexity in the summary, the
statistical gates' evidence over the test blocks, and the next evaluation scoring the
registered champion on the same blocks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kdflow.config import DistillConfig, GateConfig, TeacherConfig
from kdflow.data.sources import open_source
from kdflow.distill.driver import run_distillation
from kdflow.distill.lm_task import token_metrics
from kdflow.evaluation.summary import evaluate_models
from kdflow.models.sources import encoder_of, load_saved
from kdflow.steps import train_teacher
from tests.unit.lm_helpers import corpus_dataset, tiny_gpt2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm-eval")
    dataset = corpus_dataset(root / "dataset", documents=80, max_length=32)
    teacher = root / "teacher"
    train_teacher(dataset, tiny_gpt2(2), TeacherConfig(teacher_epochs=2, batch_size=16,
                                                       vocab_size=300), 0, teacher)
    cfg = DistillConfig(student="hf-from-teacher:n_layer=1", student_epochs=2,
                        student_batch_size=16, workers=0)
    run_distillation(str(dataset), [str(teacher)], cfg,
                     {r: str(root / r) for r in ("student", "baseline")}, str(root / "store"),
                     "lm-eval", 0)
    return {"root": root, "dataset": dataset, "teacher": teacher,
            "student": root / "student", "baseline": root / "baseline"}


def test_per_block_log_likelihoods_add_up_to_the_perplexity(run: dict[str, Path]) -> None:
    model, _ = load_saved(run["student"])
    test = open_source(str(run["dataset"])).read("test", encoder=encoder_of(model))
    found = token_metrics(model, test, per_row=True)
    assert len(found["row_nll"]) == len(test.x) and (found["row_nll"] >= 0).all()
    assert int(found["row_tokens"].sum()) == found["tokens"]
    assert found["row_tokens"].tolist() == (test.y != -100).sum(1).tolist()
    assert math.exp(found["row_nll"].sum() / found["tokens"]) == pytest.approx(
        found["perplexity"], rel=1e-6)


def test_the_summary_carries_perplexities_and_the_gates_evidence(run: dict[str, Path]) -> None:
    uri = f"sqlite:///{run['root'] / 'mlflow.db'}"
    summary = evaluate_models(run["dataset"], [run["teacher"]], run["student"],
                              run["baseline"], GateConfig(), uri, "words", {})
    for key in ("baseline", "student"):
        assert summary[key]["perplexity"] > 1.0
        assert "row_nll" not in summary[key]  # the evidence stays out of the summary
    gate = summary["gates"]["beats_baseline"]
    ev = gate["evidence"]
    assert gate["status"] in ("passed", "failed", "inconclusive")
    assert gate["passed"] == (gate["status"] == "passed")
    blocks = len(open_source(str(run["dataset"])).read(
        "test", encoder=encoder_of(load_saved(run["student"])[0])).x)
    assert ev["n"] == blocks and ev["low"] <= ev["estimate"] <= ev["high"]
    gain = math.log(summary["baseline"]["perplexity"]) - math.log(
        summary["student"]["perplexity"])
    assert ev["estimate"] == pytest.approx(gain, abs=1e-5)
    assert f"n = {blocks:,} blocks" in gate["detail"]
    assert summary["gates"]["no_regression_vs_champion"]["detail"] == "no champion yet"


def test_a_champion_identical_to_the_student_passes_on_its_blocks(
        run: dict[str, Path]) -> None:
    from kdflow.steps import register

    uri = f"sqlite:///{run['root'] / 'mlflow-champion.db'}"
    first = evaluate_models(run["dataset"], [run["teacher"]], run["student"], run["baseline"],
                            GateConfig(), uri, "words", {"sha256": "unit"})
    register(run["student"], {**first, "passed": True}, uri, "words", "auto", "unit-run", {})
    second = evaluate_models(run["dataset"], [run["teacher"]], run["student"],
                             run["baseline"], GateConfig(), uri, "words", {"sha256": "unit"})
    assert second["champion"]["version"] == 1 and "row_nll" not in second["champion"]
    gate = second["gates"]["no_regression_vs_champion"]
    assert gate["status"] == "passed" and gate["value"] == pytest.approx(0.0, abs=1e-9)
    assert (gate["evidence"]["low"], gate["evidence"]["high"]) == (0.0, 0.0)
    assert gate["detail"].startswith("no worse than champion v1 by more than 1% in perplexity")


def test_seeds_decide_a_causal_lm_beats_baseline_on_every_seed(run: dict[str, Path]) -> None:
    from kdflow.evaluation.seeds import SeedRun, apply_seeds

    other = run["root"] / "seed1"
    cfg = DistillConfig(student="hf-from-teacher:n_layer=1", student_epochs=2,
                        student_batch_size=16, workers=0)
    run_distillation(str(run["dataset"]), [str(run["teacher"])], cfg,
                     {r: str(other / r) for r in ("student", "baseline")},
                     str(run["root"] / "store"), "lm-eval-seed1", 1)
    uri = f"sqlite:///{run['root'] / 'mlflow-seeds.db'}"
    summary = evaluate_models(run["dataset"], [run["teacher"]], run["student"],
                              run["baseline"], GateConfig(), uri, "words", {})
    runs = [SeedRun(0, run["student"], run["baseline"], 0.30),
            SeedRun(1, other / "student", other / "baseline", 0.20)]
    apply_seeds(summary, run["dataset"], runs, GateConfig())
    seeds = summary["seeds"]
    assert seeds["metric"] == "perplexity" and seeds["chosen"] == 0
    assert seeds["runs"][0]["student"] == pytest.approx(summary["student"]["perplexity"])
    assert seeds["runs"][1]["student"] != seeds["runs"][0]["student"]  # its own model
    gate = summary["gates"]["beats_baseline"]
    assert "over 2 seeds" in gate["detail"] and "nats" in gate["detail"]
    test = open_source(str(run["dataset"])).read("test", encoder=encoder_of(
        load_saved(run["student"])[0]))
    assert gate["evidence"]["n"] == len(test.x)  # blocks, not blocks × seeds
    assert summary["passed"] == all(g["passed"] for g in summary["gates"].values())
