"""distill: Ray Train distillation of the teacher ensemble, next to the baseline student."""

from typing import List, NamedTuple

from kfp import dsl


def distill(
    dataset: dsl.Input[dsl.Dataset],
    teachers: dsl.Input[List[dsl.Model]],
    student: str,
    temperature: float,
    alpha: float,
    epochs: int,
    lr: float,
    batch_size: int,
    workers: int,
    max_failures: int,
    ensemble: str,
    teacher_mode: str,
    augment_noise: float,
    top_k: int,
    storage_path: str,
    ray_address: str,
    teacher_weights: List[float],
    multi_teacher: str,
    feature_weight: float,
    feature_layers: List[str],
    attention_weight: float,
    hint_teacher: int,
    generations: int,
    seed: int,
    run_name: str,
    tracking_uri: str,
    student_model: dsl.Output[dsl.Model],
    baseline_model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
    curves: dsl.Output[dsl.HTML],
) -> NamedTuple("Outputs", settings=str):
    import json
    from collections import namedtuple
    from dataclasses import asdict
    from pathlib import Path

    from kdflow.config import DistillConfig
    from kdflow.report.pages import distill_page
    from kdflow.steps import compact_history, distill

    cfg = DistillConfig(
        student=student,
        temperature=temperature,
        alpha=alpha,
        student_epochs=epochs,
        student_lr=lr,
        student_batch_size=batch_size,
        workers=workers,
        max_failures=max_failures,
        ensemble=ensemble,
        teacher_mode=teacher_mode,
        augment_noise=augment_noise,
        top_k=top_k,
        # "" is how a pipeline leaves an optional parameter unset.
        storage_path=storage_path or None,
        ray_address=ray_address or None,
        teacher_weights=[float(w) for w in teacher_weights],
        multi_teacher=multi_teacher,
        feature_weight=feature_weight,
        feature_layers=list(feature_layers),
        attention_weight=attention_weight,
        hint_teacher=hint_teacher,
        generations=generations,
    )
    work = Path(student_model.path).parent / "work"
    result = distill(
        Path(dataset.path),
        [Path(t.path) for t in teachers],
        cfg,
        seed,
        Path(student_model.path),
        Path(baseline_model.path),
        work,
        run_name,
        # The per-epoch curves go to the pipeline run's MLflow run (named by run_name).
        tracking_uri=tracking_uri or None,
        record_as=run_name,
    )
    for role, artifact in (("student", student_model), ("baseline", baseline_model)):
        artifact.metadata.update({"spec": student, "params": result[role]["params"],
                                  "history": compact_history(result[role]["history"])})
        metrics.log_metric(f"{role}_val_accuracy", result[role]["val_accuracy"])
    for i, teacher in enumerate(result["teachers"]):
        metrics.log_metric(f"teacher{i}_weight", teacher["weight"])
        metrics.log_metric(f"teacher{i}_agreement", teacher["agreement"])
    metrics.log_metric("ensemble_val_accuracy", result["ensemble"]["val_accuracy"])
    metrics.log_metric("teacher_cache_hits", sum(t["cache_hit"] for t in result["teachers"]))
    metrics.log_metric("teacher_seconds", result["seconds"]["teachers"])
    metrics.log_metric("training_seconds", result["seconds"]["training"])
    for generation in result["generations"][1:]:
        metrics.log_metric(
            f"generation{generation['generation']}_val_accuracy", generation["val_accuracy"]
        )
    Path(curves.path).write_text(distill_page(result))
    outputs = namedtuple("Outputs", ["settings"])
    return outputs(json.dumps(asdict(cfg), sort_keys=True))


def make(image: str):
    return dsl.component(base_image=image, install_kfp_package=False)(distill)
