"""The cost ledger (`kdflow.evaluation.cost`): a meter that sees CPU work, parts that sum to
the total, the saving per request from the evaluate step's timings, and the break-even,
on hand-made records where the answer is known and on the fixture's real run."""

from __future__ import annotations

import time
from typing import Any

import pytest

from kdflow.evaluation.cost import STEPS, Meter, charge, ledger, split_distill

SUMMARY = {
    "teachers": [{"latency_ms": 1.5, "throughput_per_s": 2000.0},
                 {"latency_ms": 0.5, "throughput_per_s": 4000.0}],
    "student": {"latency_ms": 0.5, "throughput_per_s": 10000.0,
                "onnx": {"exported": True, "latency_ms": 0.25, "throughput_per_s": 20000.0}},
}


def costs(distill_wall: float = 10.0, cache_wall: float = 2.0) -> dict[str, Any]:
    return {"teachers": [charge(30.0, 25.0, 2, 0), charge(20.0, 15.0, 2, 0)],
            "distill": {"record": charge(distill_wall, 8.0, 2, 0),
                        "cache_fill_wall_s": cache_wall}}


def test_the_meter_sees_cpu_work_and_charges_the_cores_it_held() -> None:
    with Meter() as meter:
        deadline = time.perf_counter() + 0.3
        while time.perf_counter() < deadline:
            sum(range(1000))
    record = meter.record()
    assert record["wall_s"] >= 0.3 and record["cpu_s"] >= 0.2
    assert record["core_s"] == pytest.approx(record["wall_s"] * record["cores"], abs=1e-2)
    assert record["gpu_s"] == pytest.approx(record["wall_s"] * record["gpus"], abs=1e-2)


def test_the_parts_sum_to_the_total() -> None:
    found = ledger(costs(), charge(4.0, 3.5, 2, 0), SUMMARY)
    for key in ("wall_s", "cpu_s", "core_s", "gpu_s"):
        assert found["total"][key] == pytest.approx(sum(found[p][key] for p in STEPS))
    assert found["teachers"]["wall_s"] == 50.0 and found["teachers"]["core_s"] == 100.0
    assert found["cache_fill"]["wall_s"] == 2.0 and found["distillation"]["wall_s"] == 8.0
    assert found["total"]["wall_s"] == pytest.approx(64.0)


def test_several_seeds_distillations_add_up() -> None:
    one = costs()["distill"]
    other = {"record": charge(6.0, 5.0, 2, 0), "cache_fill_wall_s": 0.5}  # a cache hit
    found = ledger({**costs(), "distill": [one, other]}, charge(4.0, 3.5, 2, 0), SUMMARY)
    assert found["cache_fill"]["wall_s"] == 2.5 and found["distillation"]["wall_s"] == 13.5
    assert found["total"]["wall_s"] == pytest.approx(50.0 + 16.0 + 4.0)
    assert found["distillation"]["core_s"] == pytest.approx(27.0)


def test_the_distill_step_splits_by_the_cache_fills_share_of_its_time() -> None:
    parts = split_distill(charge(10.0, 6.0, 4, 1), 2.5)
    assert parts["cache_fill"]["core_s"] == 10.0 and parts["distillation"]["core_s"] == 30.0
    assert parts["cache_fill"]["gpu_s"] == 2.5 and parts["distillation"]["cpu_s"] == 4.5


def test_saving_per_request_and_break_even() -> None:
    found = ledger(costs(), charge(4.0, 3.5, 2, 0), SUMMARY)
    inference = found["inference"]
    assert inference["ensemble_ms"]["pytorch"] == 2.0  # the teachers one after another
    assert inference["saving_ms"] == {"pytorch": 1.5, "onnx": 1.75,
                                      "pytorch_batch": pytest.approx(0.65),
                                      "onnx_batch": pytest.approx(0.70)}
    # cache 4 + distillation 16 + evaluation 8 core-seconds = 28 s = 28,000 ms of savings
    assert found["break_even_requests"]["pytorch"] == 18_667  # ceil(28000 / 1.5)
    assert found["break_even_requests"]["onnx"] == 16_000
    assert found["break_even_requests_with_teachers"]["pytorch"] == 85_334  # + 100 core-s
    assert inference["unit"] == "row"


def test_a_student_that_saves_nothing_never_breaks_even() -> None:
    slow = {**SUMMARY, "student": {"latency_ms": 3.0, "onnx": {"exported": False}}}
    found = ledger(costs(), charge(1.0, 1.0, 1, 0), slow)
    assert found["break_even_requests"]["pytorch"] is None
    assert found["inference"]["saving_ms"]["onnx"] is None
    assert "pytorch_batch" not in found["inference"]["saving_ms"]


def test_steps_that_did_not_report_count_as_zero() -> None:
    found = ledger({}, charge(2.0, 1.0, 1, 0), SUMMARY)
    assert found["teachers"]["wall_s"] == 0.0 and found["distillation"]["core_s"] == 0.0
    assert found["total"]["wall_s"] == 2.0


def test_the_real_runs_ledger_is_in_the_summary_the_report_and_the_metrics(
        run_summary: dict[str, Any]) -> None:
    from kdflow.mlflow.registry import summary_metrics
    from kdflow.report.markdown import report_markdown
    from kdflow.report.pages import render_html

    cost = run_summary["cost"]
    assert cost["teachers"]["wall_s"] > 0 and cost["distillation"]["wall_s"] > 0
    assert cost["evaluation"]["wall_s"] > 0 and cost["evaluation"]["cpu_s"] > 0
    assert cost["total"]["core_s"] == pytest.approx(sum(cost[p]["core_s"] for p in STEPS),
                                                    abs=0.01)
    assert set(cost["inference"]["saving_ms"]) >= {"pytorch", "onnx"}
    assert "## Cost and savings" in report_markdown(run_summary)
    assert "<h2>Cost and savings</h2>" in render_html(run_summary, {})
    metrics = summary_metrics(run_summary)
    assert metrics["cost_total_core_s"] == pytest.approx(cost["total"]["core_s"])
    assert "cost_saving_ms_pytorch" in metrics
