"""train_teacher: train one member of the teacher ensemble, or import it from MLflow."""

from kfp import dsl


def train_teacher(
    dataset: dsl.Input[dsl.Dataset],
    spec: str,
    seed: int,
    index: int,
    teacher_config: str,
    tracking_uri: str,
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
    curves: dsl.Output[dsl.HTML],
):
    import json
    from pathlib import Path

    from kdflow.config import TeacherConfig
    from kdflow.report.pages import teacher_page
    from kdflow.steps import compact_history, train_teacher

    cfg = TeacherConfig(**json.loads(teacher_config))
    result = train_teacher(Path(dataset.path), spec, cfg, seed, Path(model.path),
                           tracking_uri or None, index=index)
    # The history rides on the model to the evaluate step, which draws every curve.
    model.metadata.update({"spec": spec, "seed": seed, "index": index, "params": result["params"],
                           "history": compact_history(result["history"]),
                           "cost": result["cost"]})
    Path(curves.path).write_text(teacher_page(result))
    metrics.log_metric("val_accuracy", result["val_accuracy"])
    metrics.log_metric("params", result["params"])


def make(image: str):
    return dsl.component(base_image=image, install_kfp_package=False)(train_teacher)
