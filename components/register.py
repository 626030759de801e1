"""register: put the student in the MLflow model registry (runs only when every gate passed)."""

from kfp import dsl


def register(
    student_model: dsl.Input[dsl.Model],
    onnx_model: dsl.Input[dsl.Model],
    summary: str,
    registry_config: str,
    distill_config: str,
    run_id: str,
    report: dsl.Output[dsl.Markdown],
    metrics: dsl.Output[dsl.Metrics],
) -> str:
    import json
    from pathlib import Path

    from kdflow.config import RegistryConfig
    from kdflow.report.pages import registration_markdown
    from kdflow.steps import register

    registry = RegistryConfig(**json.loads(registry_config))
    result = register(
        Path(student_model.path),
        json.loads(summary),
        registry.tracking_uri,
        registry.model_name,
        registry.promotion,
        run_id,
        json.loads(distill_config),  # the KD settings, for the version's lineage tags
        onnx_path=Path(onnx_model.path) / "model.onnx",
    )
    Path(report.path).write_text(registration_markdown(result))
    metrics.log_metric("version", result["registered"]["version"])
    metrics.log_metric("promoted_to_champion", float(result["registered"]["promoted"]))
    return json.dumps(result)


def make(image: str):
    return dsl.component(base_image=image, install_kfp_package=False)(register)
