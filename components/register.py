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
) -> str:
    import json
    from pathlib import Path

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
    return json.dumps(result)


def make(image: str):
    return dsl.component(base_image=image, install_kfp_package=False)(register)
