"""evaluate: test-split metrics of every model, and the gates that decide registration."""

from typing import List, NamedTuple

from kfp import dsl


def evaluate(
    dataset: dsl.Input[dsl.Dataset],
    teachers: dsl.Input[List[dsl.Model]],
    student_model: dsl.Input[dsl.Model],
    baseline_model: dsl.Input[dsl.Model],
    dataset_info: str,
    min_retention: float,
    min_gain_over_baseline: float,
    min_compression: float,
    min_speedup: float,
    max_regression: float,
    tracking_uri: str,
    model_name: str,
    metrics: dsl.Output[dsl.Metrics],
    report: dsl.Output[dsl.Markdown],
) -> NamedTuple("Outputs", passed=bool, summary=str):
    import json
    from collections import namedtuple
    from pathlib import Path

    from kdflow.config import GateConfig
    from kdflow.steps import evaluate

    gates = GateConfig(
        min_retention=min_retention,
        min_gain_over_baseline=min_gain_over_baseline,
        min_compression=min_compression,
        min_speedup=min_speedup,
        max_regression=max_regression,
    )
    summary = evaluate(
        Path(dataset.path),
        [Path(t.path) for t in teachers],
        Path(student_model.path),
        Path(baseline_model.path),
        gates,
        tracking_uri or None,
        model_name,
        json.loads(dataset_info),
        Path(report.path),
    )
    for role in ("student", "baseline", "ensemble"):
        metrics.log_metric(f"{role}_accuracy", summary[role]["accuracy"])
    metrics.log_metric("student_params", summary["student"]["params"])
    metrics.log_metric("student_latency_ms", summary["student"]["latency_ms"])
    outputs = namedtuple("Outputs", ["passed", "summary"])
    return outputs(summary["passed"], json.dumps(summary))


def make(image: str):
    return dsl.component(base_image=image, install_kfp_package=False)(evaluate)
