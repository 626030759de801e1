"""train_teacher: train one teacher from a zoo spec, or import it from MLflow."""

from kfp import dsl


def train_teacher(
    dataset: dsl.Input[dsl.Dataset],
    spec: str,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    tracking_uri: str,
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
    curves: dsl.Output[dsl.HTML],
):
    from pathlib import Path

    from kdflow.config import TeacherConfig
    from kdflow.report.pages import teacher_page
    from kdflow.steps import compact_history, train_teacher

    cfg = TeacherConfig(
        teachers=[spec], teacher_epochs=epochs, teacher_lr=lr, batch_size=batch_size
    )
    result = train_teacher(
        Path(dataset.path), spec, cfg, seed, Path(model.path), tracking_uri or None
    )
    # The history rides on the model to the evaluate step, which draws every curve.
    model.metadata.update(
        {"spec": spec, "params": result["params"],
         "history": compact_history(result["history"])}
    )
    Path(curves.path).write_text(teacher_page(result))
    metrics.log_metric("val_accuracy", result["val_accuracy"])
    metrics.log_metric("params", result["params"])


def make(image: str):
    return dsl.component(base_image=image, install_kfp_package=False)(train_teacher)
