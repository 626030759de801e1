"""evaluate: test-split metrics of every model, the ONNX export, and the registration gates."""

from typing import List, NamedTuple

from kfp import dsl


def evaluate(
    dataset: dsl.Input[dsl.Dataset],
    teachers: dsl.Input[List[dsl.Model]],
    student_model: dsl.Input[dsl.Model],
    baseline_model: dsl.Input[dsl.Model],
    seed_models: dsl.Input[dsl.Model],
    dataset_info: str,
    gate_config: str,
    registry_config: str,
    metrics: dsl.Output[dsl.Metrics],
    confusion: dsl.Output[dsl.ClassificationMetrics],
    report: dsl.Output[dsl.Markdown],
    onnx_model: dsl.Output[dsl.Model],
    plots: dsl.Output[dsl.HTML],
) -> NamedTuple("Outputs", passed=bool, summary=str):
    import json
    from collections import namedtuple
    from pathlib import Path

    from kdflow.config import GateConfig, RegistryConfig
    from kdflow.evaluation.seeds import runs_of
    from kdflow.mlflow.registry import summary_metrics
    from kdflow.report.pages import summary_page
    from kdflow.steps import evaluate

    registry = RegistryConfig(**json.loads(registry_config))
    student, baseline = Path(student_model.path), Path(baseline_model.path)
    summary = evaluate(
        Path(dataset.path),
        [Path(t.path) for t in teachers],
        student,
        baseline,
        GateConfig(**json.loads(gate_config)),
        registry.tracking_uri,
        registry.model_name,
        json.loads(dataset_info),
        Path(report.path),
        teacher_sources=[str(t.metadata.get("spec", "")) for t in teachers],
        onnx_dir=Path(onnx_model.path),
        histories={
            "teachers": [list(t.metadata.get("history") or []) for t in teachers],
            "student": list(student_model.metadata.get("history") or []),
            "baseline": list(baseline_model.metadata.get("history") or []),
        },
        costs={"teachers": [t.metadata.get("cost") for t in teachers],
               "distill": student_model.metadata.get("cost")},
        # --seeds: every seed's student and baseline (the other seeds' in seed_models).
        seed_runs=runs_of(student_model.metadata.get("seeds"), student, baseline,
                          Path(seed_models.path)),
    )
    Path(plots.path).write_text(summary_page(summary))
    for name, value in summary_metrics(summary).items():
        metrics.log_metric(name, value)
    if "confusion_matrix" in summary["student"]:  # classification; a causal LM has none
        confusion.log_confusion_matrix(list(summary["student"]["per_class_accuracy"]),
                                       summary["student"]["confusion_matrix"])
    onnx_model.metadata.update({"format": "onnx", "file": "model.onnx"})
    outputs = namedtuple("Outputs", ["passed", "summary"])
    return outputs(summary["passed"], json.dumps(summary))


def make(image: str):
    return dsl.component(base_image=image, install_kfp_package=False)(evaluate)
