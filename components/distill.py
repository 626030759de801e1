"""distill: Ray Train distillation of the teacher ensemble, next to the baseline student (once
per seed with --seeds: `seed_models` holds the seeds not chosen, empty otherwise)."""

from typing import List

from kfp import dsl


def distill(
    dataset: dsl.Input[dsl.Dataset],
    teachers: dsl.Input[List[dsl.Model]],
    distill_config: str,
    seed: int,
    run_name: str,
    tracking_uri: str,
    student_model: dsl.Output[dsl.Model],
    baseline_model: dsl.Output[dsl.Model],
    seed_models: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
    curves: dsl.Output[dsl.HTML],
):
    import json
    from pathlib import Path

    from kdflow.config import DistillConfig
    from kdflow.report.pages import distill_page
    from kdflow.steps import compact_history, distill, distill_seeds

    cfg = DistillConfig(**json.loads(distill_config))
    folders = (Path(student_model.path), Path(baseline_model.path))
    work = Path(student_model.path).parent / "work"
    if len(cfg.seeds) > 1:  # --seeds: one distillation each, the best on validation chosen
        result = distill_seeds(Path(dataset.path), [Path(t.path) for t in teachers], cfg,
                               *folders, Path(seed_models.path), work, run_name,
                               tracking_uri=tracking_uri or None, record_as=run_name)
        student_model.metadata["seeds"] = result["seeds"]
    else:
        result = distill(Path(dataset.path), [Path(t.path) for t in teachers], cfg,
                         cfg.seeds[0] if cfg.seeds else seed, *folders, work, run_name,
                         # The per-epoch curves go to the pipeline run's MLflow run.
                         tracking_uri=tracking_uri or None, record_as=run_name)
    # Never empty, so every artifact store keeps it: the seeds' record, {} for one seed.
    Path(seed_models.path).mkdir(parents=True, exist_ok=True)
    (Path(seed_models.path) / "seeds.json").write_text(json.dumps(result.get("seeds") or {}))
    for role, artifact in (("student", student_model), ("baseline", baseline_model)):
        artifact.metadata.update({"spec": cfg.student, "params": result[role]["params"],
                                  "history": compact_history(result[role]["history"])})
        metrics.log_metric(f"{role}_val_accuracy", result[role]["val_accuracy"])
    student_model.metadata["cost"] = result["cost"]  # for the evaluate step's ledger
    for i, teacher in enumerate(result["teachers"]):
        metrics.log_metric(f"teacher{i}_weight", teacher["weight"])
        if teacher["agreement"] is not None:  # classification; a causal LM's is on test
            metrics.log_metric(f"teacher{i}_agreement", teacher["agreement"])
    if result["ensemble"]["val_accuracy"] is not None:
        metrics.log_metric("ensemble_val_accuracy", result["ensemble"]["val_accuracy"])
    metrics.log_metric("teacher_cache_hits", sum(t["cache_hit"] for t in result["teachers"]))
    metrics.log_metric("teacher_seconds", result["seconds"]["teachers"])
    metrics.log_metric("training_seconds", result["seconds"]["training"])
    for generation in result["generations"][1:]:
        metrics.log_metric(f"generation{generation['generation']}_val_accuracy",
                           generation["val_accuracy"])
    Path(curves.path).write_text(distill_page(result))


def make(image: str):
    return dsl.component(base_image=image, install_kfp_package=False)(distill)
