"""register: put the student in the MLflow model registry (runs only when every gate passed)."""

from kfp import dsl


def register(
    student_model: dsl.Input[dsl.Model],
    onnx_model: dsl.Input[dsl.Model],
    summary: str,
    tracking_uri: str,
    model_name: str,
    promotion: str,
    run_id: str,
    kd_settings: str,
    report: dsl.Output[dsl.Markdown],
    metrics: dsl.Output[dsl.Metrics],
) -> str:
    import json
    from pathlib import Path

    from kdflow.report.pages import registration_markdown
    from kdflow.steps import register

    result = register(
        Path(student_model.path),
        json.loads(summary),
        tracking_uri or None,
        model_name,
        promotion,
        run_id,
        json.loads(kd_settings),
        onnx_path=Path(onnx_model.path) / "model.onnx",
    )
    Path(report.path).write_text(registration_markdown(result))
    metrics.log_metric("version", result["registered"]["version"])
    metrics.log_metric("promoted_to_champion", float(result["registered"]["promoted"]))
    return json.dumps(result)


def make(image: str):
    return dsl.component(base_image=image, install_kfp_package=False)(register)
