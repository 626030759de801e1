"""One function per pipeline step. Components are thin wrappers around these, and unit
tests call them directly, without KFP."""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdflow import progress
from kdflow.config import BUILTIN_PREFIX, DataConfig, DistillConfig, GateConfig, TeacherConfig
from kdflow.data import storage
from kdflow.errors import KdflowError

if TYPE_CHECKING:
    from kdflow.evaluation.seeds import SeedRun

log = logging.getLogger(__name__)

# What steps hand to later steps (output parameters, artifact metadata) travels inside the
# next step's executor input: one command-line argument under kfp.local (at most 128 KiB on
# Linux) and a row of ML Metadata on a cluster. It is kept small: curves keep what the
# pictures draw, at 5 significant digits, and the validation result keeps its first
# findings and feature statistics (the step's report and MLflow record have them all).
HISTORY_KEYS = ("epoch", "loss", "hard_loss", "soft_loss", "val_accuracy", "feature_loss",
                "attention_loss")
MAX_FEATURE_STATS = 256
MAX_FINDINGS = 50


def compact_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A training history as it crosses steps: the keys the pictures draw, 5 digits."""
    return [
        {key: _significant(value) for key, value in epoch.items() if key in HISTORY_KEYS}
        for epoch in history
    ]


def _significant(value: Any, digits: int = 5) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value != 0.0:
        return round(value, digits - 1 - int(math.floor(math.log10(abs(value)))))
    return value


def _transportable(info: dict[str, Any]) -> dict[str, Any]:
    """The validate step's result as it crosses steps (see MAX_FEATURE_STATS)."""
    validation = dict(info.get("validation") or {})
    statistics = {}
    for split, stats in (validation.get("statistics") or {}).items():
        stats = dict(stats)
        features = stats.get("features") or {}
        if len(features) > MAX_FEATURE_STATS:
            stats["features"] = dict(list(features.items())[:MAX_FEATURE_STATS])
            stats["features_omitted"] = len(features) - MAX_FEATURE_STATS
        statistics[split] = stats
    validation["statistics"] = statistics
    for key in ("failures", "warnings"):
        findings = validation.get(key) or []
        if len(findings) > MAX_FINDINGS:
            validation[key] = findings[:MAX_FINDINGS]
            validation[f"{key}_omitted"] = len(findings) - MAX_FINDINGS
    return {**info, "validation": validation}


def validate_data(
    cfg: DataConfig,
    seed: int,
    dataset_dir: Path,
    report_path: Path,
    docs_dir: Path | None = None,
    tracking_uri: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Read the data, hold it to its contract, and write the prepared dataset folder.

    Writes the Markdown report before raising, so a failed run still shows what was wrong.
    With `run_id`, the result and the dataset hash are recorded on the pipeline run's MLflow
    run (`kdflow.mlflow.tracking`), whether the data passed or not.
    """
    import pandas as pd

    from kdflow.data.image_facts import is_image_data
    from kdflow.data.prepared import (
        default_input_shape,
        frame_sha256,
        load_frame,
        split_frame,
        write_prepared,
    )
    from kdflow.validation.checks import validate_dataset, validate_frames
    from kdflow.validation.contract import DataContract, default_contract

    progress.emit("validate data", 0, 3, "contract checks")
    if cfg.task == "causal-lm":
        return _validate_corpus(cfg, seed, dataset_dir, report_path, docs_dir, tracking_uri,
                                run_id)
    if is_image_data(cfg.data, cfg.image_column):
        return _validate_images(cfg, seed, dataset_dir, report_path, docs_dir, tracking_uri,
                                run_id)
    input_shape = cfg.input_shape or default_input_shape(cfg.data)
    text_columns = [c for c in (cfg.text_column, cfg.text_pair_column) if c]
    contract = (
        DataContract.from_yaml(cfg.contract)
        if cfg.contract
        else default_contract(
            cfg.label_column,
            input_shape=input_shape,
            text_columns=text_columns or None,
            max_length=cfg.tokens if text_columns else None,
        )
    )
    if cfg.data.startswith(BUILTIN_PREFIX):
        frame = load_frame(cfg.data, cfg.label_column)
        report = validate_frames(frame, None, contract, docs_dir)
    else:
        # Files are validated by streaming them (bounded memory) before anything loads them.
        report = validate_dataset(cfg.data, cfg.test_data, contract, docs_dir)
    _hold_to_contract(report, cfg, report_path, tracking_uri, run_id)
    progress.emit("validate data", 1, 3, "splits")
    if not cfg.data.startswith(BUILTIN_PREFIX):
        frame = load_frame(cfg.data, cfg.label_column)
    if cfg.test_data:
        train, test = frame, load_frame(cfg.test_data, cfg.label_column)
    else:
        train, test = split_frame(frame, cfg.label_column, cfg.test_fraction, seed, cfg.data)
    if cfg.val_fraction > 0:
        train, val = split_frame(train, cfg.label_column, cfg.val_fraction, seed)
    else:
        val = train
    # The hash covers every row the run saw: the whole file, plus the test file if given.
    sha = frame_sha256(pd.concat([frame, test], ignore_index=True) if cfg.test_data else frame)
    meta = write_prepared(
        dataset_dir,
        {"train": train, "val": val, "test": test},
        cfg.label_column,
        input_shape,
        sha,
        cfg.data,
        text_columns=text_columns or None,
        max_length=cfg.tokens,
        feature_columns=list(contract.features) if contract.features else None,
    )
    progress.emit("validate data", 3, 3, report.summary_line())
    splits = {"train": train, "val": val, "test": test}
    counts = {
        name: {str(c): int(n) for c, n in split[cfg.label_column].value_counts().items()}
        for name, split in splits.items()
        if name != "val" or cfg.val_fraction > 0
    }
    return _validated(meta, counts, report, cfg, report_path, tracking_uri, run_id)


def _validate_images(
    cfg: DataConfig,
    seed: int,
    dataset_dir: Path,
    report_path: Path,
    docs_dir: Path | None,
    tracking_uri: str | None,
    run_id: str | None,
) -> dict[str, Any]:
    """`validate_data` for a folder of images or a table of image paths or bytes."""
    from kdflow.validation.image_dataset import prepare_image_data, validate_image_data

    data = validate_image_data(cfg, docs_dir)
    _hold_to_contract(data.report, cfg, report_path, tracking_uri, run_id)
    progress.emit("validate data", 1, 3, "decoding images")
    meta, counts = prepare_image_data(data, cfg, seed, dataset_dir)
    progress.emit("validate data", 3, 3, data.report.summary_line())
    return _validated(meta, counts, data.report, cfg, report_path, tracking_uri, run_id)


def _validate_corpus(
    cfg: DataConfig,
    seed: int,
    dataset_dir: Path,
    report_path: Path,
    docs_dir: Path | None,
    tracking_uri: str | None,
    run_id: str | None,
) -> dict[str, Any]:
    """`validate_data` for a causal-lm corpus (a text column, or prompts and completions):
    no classes, so the class counts are empty and `splits` counts documents."""
    from kdflow.validation.corpus import prepare_corpus, validate_corpus

    data = validate_corpus(cfg, seed, docs_dir, report_path)
    _hold_to_contract(data.report, cfg, report_path, tracking_uri, run_id)
    progress.emit("validate data", 1, 3, "splits")
    meta, counts = prepare_corpus(data, cfg, dataset_dir)
    progress.emit("validate data", 3, 3, data.report.summary_line())
    return _validated(meta, counts, data.report, cfg, report_path, tracking_uri, run_id)


def _hold_to_contract(
    report: Any, cfg: DataConfig, report_path: Path, tracking_uri: str | None, run_id: str | None
) -> None:
    """Write the validation report; raise for failures under --validation fail (recorded on
    the run's MLflow run first), warn under --validation warn."""
    from kdflow.mlflow.tracking import record_validation

    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(report.to_markdown())
    if report.passed:
        return
    if cfg.validation == "fail":
        if run_id:
            record_validation(tracking_uri, run_id, cfg.data,
                              {"passed": False, "validation": report.to_dict()}, report_path)
        report.raise_for_failures()
    log.warning("data validation failed, continuing (--validation warn): %s",
                report.summary_line())


def _validated(
    meta: Any,
    class_counts: dict[str, dict[str, int]],
    report: Any,
    cfg: DataConfig,
    report_path: Path,
    tracking_uri: str | None,
    run_id: str | None,
) -> dict[str, Any]:
    """What the validate step hands on (and records on the run's MLflow run)."""
    from kdflow.mlflow.tracking import record_validation

    info = {
        "sha256": meta.sha256,
        "rows": int(sum(v for k, v in meta.rows.items() if k != "val" or cfg.val_fraction > 0)),
        "splits": meta.rows,
        "classes": meta.classes,
        "features": meta.n_features,
        "input_shape": meta.input_shape,
        "kind": meta.kind,
        "text_columns": meta.text_columns,
        # Class balance of each prepared split, for the data profile picture.
        "class_counts": class_counts,
        "validation": report.to_dict(),
        "passed": bool(report.passed),
    }
    if run_id:
        info["mlflow_run_id"] = record_validation(tracking_uri, run_id, cfg.data, info,
                                                  report_path)
    return _transportable(info)


def plan_teachers(dataset_dir: Path, cfg: TeacherConfig, seed: int) -> list[dict[str, Any]]:
    """The ensemble, one entry per member: its spec (`auto` expanded to teachers that fit
    the prepared data's shape), its position, and its own seed (derived from `seed` and the
    position, so identical specs still train different models)."""
    from kdflow.data.prepared import read_meta
    from kdflow.distill.runtime import member_seed
    from kdflow.models.zoo import AUTO, resolve_teachers

    meta = read_meta(dataset_dir)
    specs = resolve_teachers(cfg.teachers, meta.input_shape, meta.kind)
    if cfg.teachers == [AUTO]:
        log.info(
            "teachers for samples of shape %s: %s",
            "x".join(map(str, meta.input_shape)),
            ", ".join(specs),
        )
    return [{"spec": s, "seed": member_seed(seed, i), "index": i} for i, s in enumerate(specs)]


def train_teacher(
    dataset_dir: Path,
    spec: str,
    cfg: TeacherConfig,
    seed: int,
    model_dir: Path,
    tracking_uri: str | None = None,
    index: int = 0,
) -> dict[str, Any]:
    """Train ensemble member `index` with its own `seed` (`plan_teachers`) through the
    distillation loop, or fetch an existing one (`models:/name@alias`) and use it as it is.
    `cost` is what the step used (`kdflow.evaluation.cost`)."""
    from kdflow.evaluation.cost import Meter

    with Meter() as meter:
        result = _train_teacher(dataset_dir, spec, cfg, seed, model_dir, tracking_uri, index)
    return result | {"cost": meter.record()}


def _train_teacher(
    dataset_dir: Path,
    spec: str,
    cfg: TeacherConfig,
    seed: int,
    model_dir: Path,
    tracking_uri: str | None,
    index: int,
) -> dict[str, Any]:
    from kdflow.data.sources import open_source
    from kdflow.distill.driver import train_teacher as train_in_loop
    from kdflow.distill.tasks import task_for, task_named
    from kdflow.distill.teachers import load_teacher
    from kdflow.errors import ConfigError
    from kdflow.models.sources import PrepareContext, encoder_of, source_for
    from kdflow.models.zoo import count_params

    source = source_for(spec)
    source.check(spec, "--teachers")
    member = {"spec": spec, "seed": seed, "index": index}
    # A fetched teacher is used as it is, except a transformers folder given epochs: that is
    # fine-tuned in the loop (from its weights, a new head where the labels differ).
    fine_tune = source.fetches and cfg.teacher_epochs > 0 and source.kind == "hf"
    if source.fetches and not fine_tune:
        data = open_source(str(dataset_dir))
        context = PrepareContext(data, seed, trust_remote_code=cfg.trust_remote_code,
                                 option="--teachers")
        source.fetch(spec, model_dir, tracking_uri, context)
        model, _ = load_teacher(str(model_dir), data.meta)
        task = task_named(task_for(data.meta))
        val = data.read("val", encoder=encoder_of(model))
        return member | {
            "val_accuracy": task.score(model, val),
            "params": count_params(model),
            "epochs": 0,
            "history": [],
        }
    if cfg.teacher_epochs == 0:
        raise ConfigError(
            f"--teacher-epochs 0: teacher {spec} is built fresh and must train; give epochs, "
            "or a trained model (hf:FOLDER, models:/NAME@ALIAS)",
            option="--teacher-epochs",
        )

    def on_epoch(stats: dict[str, Any]) -> None:
        epoch, acc = stats["epoch"], stats["teacher/val_accuracy"]
        log.info("teacher %s epoch %d loss %.4f val_acc %.4f", spec, epoch,
                 stats["teacher/loss"], acc)
        progress.emit(f"teacher {spec}", epoch, cfg.teacher_epochs, f"val acc {acc:.3f}")

    result = train_in_loop(
        str(dataset_dir), spec, cfg, seed, model_dir, {"seed": seed, "index": index}, on_epoch
    )
    return member | result | {"epochs": cfg.teacher_epochs}


def distill(
    dataset_dir: Path,
    teacher_dirs: list[Path],
    cfg: DistillConfig,
    seed: int,
    student_dir: Path,
    baseline_dir: Path,
    work_dir: Path,
    run_name: str,
    tracking_uri: str | None = None,
    record_as: str | None = None,
    metric_prefix: str = "",
) -> dict[str, Any]:
    """Distil (`kdflow.distill.run.distill`), with progress per epoch; with `record_as` (the
    pipeline run id) the per-epoch curves go to that run's MLflow run too, their names
    after `metric_prefix` (`seed1/` where --seeds runs several). `cost` is what the step
    used and how much of its wall time went to the teacher cache."""
    from kdflow.distill.run import distill as run_distill
    from kdflow.distill.run import with_shared_storage
    from kdflow.distill.watcher import EpochWatcher
    from kdflow.evaluation.cost import Meter
    from kdflow.mlflow.tracking import record_training

    cfg = with_shared_storage(cfg)

    with Meter() as meter:
        progress.emit("teacher inference", 0, len(teacher_dirs))
        watcher = None
        if not cfg.ray_address:
            run_dir = storage.join(cfg.storage_path or str(work_dir), "ray", run_name)
            watcher = EpochWatcher(run_dir, cfg.student_epochs)
            watcher.start()
        try:
            result = run_distill(dataset_dir, teacher_dirs, cfg, student_dir, baseline_dir,
                                 work_dir, run_name, seed)
        finally:
            if watcher is not None:
                watcher.stop()
        if record_as:
            result["mlflow_run_id"] = record_training(tracking_uri, record_as, result,
                                                     prefix=metric_prefix)
    result["cost"] = {"record": meter.record(),
                      "cache_fill_wall_s": float(result["seconds"]["teachers"])}
    return result


def distill_seeds(
    dataset_dir: Path,
    teacher_dirs: list[Path],
    cfg: DistillConfig,
    student_dir: Path,
    baseline_dir: Path,
    seeds_dir: Path,
    work_dir: Path,
    run_name: str,
    tracking_uri: str | None = None,
    record_as: str | None = None,
) -> dict[str, Any]:
    """`distill` once per seed of --seeds, one after another (the teachers' cache, filled by
    the first, serves the rest): the chosen seed's student and baseline (best validation
    accuracy, `kdflow.evaluation.seeds.choose`) end in `student_dir` and `baseline_dir`, the
    others' in `seeds_dir/seed<N>/`. Returns the chosen seed's result, with `seeds` (each
    seed's validation accuracy and folders) and `cost` (one record per seed)."""
    import shutil

    from kdflow.evaluation.seeds import SeedRun, choose

    results, runs = {}, []
    for i, seed in enumerate(cfg.seeds):
        own = seeds_dir / f"seed{seed}"
        log.info("distilling seed %d of %s", seed, cfg.seeds)
        progress.emit("seeds", i, len(cfg.seeds), f"seed {seed}")
        results[seed] = distill(dataset_dir, teacher_dirs, cfg, seed, own / "student",
                                own / "baseline", work_dir, f"{run_name}-seed{seed}",
                                tracking_uri, record_as, metric_prefix=f"seed{seed}/")
        runs.append(SeedRun(seed, own / "student", own / "baseline",
                            results[seed]["student"]["val_accuracy"]))
    chosen = choose(runs)
    progress.emit("seeds", len(runs), len(runs), f"seed {chosen.seed} chosen")
    for source, target in ((chosen.student, student_dir), (chosen.baseline, baseline_dir)):
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(source), str(target))
    result = dict(results[chosen.seed])
    result["seeds"] = {"chosen": chosen.seed, "runs": [
        {"seed": r.seed, "val_accuracy": r.val_accuracy,
         "folder": None if r.seed == chosen.seed else f"seed{r.seed}"} for r in runs]}
    result["cost"] = [results[r.seed]["cost"] for r in runs]
    return result


def evaluate(
    dataset_dir: Path,
    teacher_dirs: list[Path],
    student_dir: Path,
    baseline_dir: Path,
    gates_cfg: GateConfig,
    tracking_uri: str | None,
    model_name: str,
    dataset_info: dict[str, Any],
    report_path: Path,
    teacher_sources: list[str] | None = None,
    onnx_dir: Path | None = None,
    histories: dict[str, Any] | None = None,
    costs: dict[str, Any] | None = None,
    seed_runs: list[SeedRun] | None = None,
) -> dict[str, Any]:
    """Test-split metrics for every model, the gates, and the run summary (not yet registered).

    `seed_runs` are every seed's distillation when --seeds ran several (`distill_seeds`):
    `student_dir` and `baseline_dir` are then the chosen seed's, which the gates judge, but
    beats_baseline decides on all seeds together (`kdflow.evaluation.seeds.apply_seeds`).

    `costs` are the other steps' `cost` records, `{"teachers": [...], "distill": ...}`: the
    summary's `cost` ledger adds this step's and the saving per request
    (`kdflow.evaluation.cost.ledger`).

    `histories` are the training curves, `{"teachers": [[epoch, ...], ...], "student": [...],
    "baseline": [...]}` (each epoch a dict of losses and val accuracy), kept in the summary
    for the pictures.

    `teacher_sources` are the teachers' specs as given (an MLflow URI for an imported
    teacher, recorded with the version it resolves to); `onnx_dir` receives the student's
    ONNX export (`model.onnx`), checked against PyTorch on the whole test split.
    """
    from kdflow.evaluation.cost import Meter, ledger
    from kdflow.evaluation.summary import evaluate_models
    from kdflow.report.markdown import report_markdown

    with Meter() as meter:
        summary = evaluate_models(
            dataset_dir, teacher_dirs, student_dir, baseline_dir, gates_cfg, tracking_uri,
            model_name, dataset_info, teacher_sources, onnx_dir, histories,
        )
        if seed_runs and len(seed_runs) > 1:
            from kdflow.evaluation.seeds import apply_seeds

            apply_seeds(summary, dataset_dir, seed_runs, gates_cfg)
            progress.emit("evaluate", 3, 3, "gates passed" if summary["passed"]
                          else "a gate did not pass")
    summary["cost"] = ledger(costs or {}, meter.record(), summary)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(report_markdown(summary))
    return summary


def champion_on_test(
    tracking_uri: str | None, model_name: str, meta: Any, test: Any, seen: Any = None
) -> dict[str, Any] | None:
    """The current champion's metrics on this test split, or None when there is none
    (`kdflow.evaluation.summary.champion_on_test`)."""
    from kdflow.evaluation.summary import champion_on_test as on_test

    return on_test(tracking_uri, model_name, meta, test, seen=seen)


def register(
    student_dir: Path,
    summary: dict[str, Any],
    tracking_uri: str | None,
    model_name: str,
    promotion: str,
    run_id: str,
    kd_settings: dict[str, Any],
    onnx_path: Path | None = None,
    policy: Any = None,
) -> dict[str, Any]:
    """Register the student (only called when every gate passed) and return the summary.

    `onnx_path` is the evaluate step's ONNX export; without it the student is exported
    again here. `policy` is a `kdflow.mlflow.client.RetryPolicy` (default: its defaults).
    """
    from kdflow.mlflow.client import resolve_tracking_uri
    from kdflow.mlflow.registry import code_version, register_student
    from kdflow.models.onnx import export_checked

    if not summary.get("passed"):
        raise KdflowError("refusing to register: a gate did not pass (see the evaluation report)")
    teachers = [
        {"spec": t["spec"], **{k: v for k, v in t.get("registry", {}).items() if k != "uri"}}
        for t in summary["teachers"]
    ]
    tags = {
        "kdflow.run_id": run_id,
        "kdflow.dataset_sha256": summary["dataset"]["sha256"],
        "kdflow.validation_passed": str(summary["dataset"].get("passed", True)).lower(),
        "kdflow.teachers": json.dumps(teachers),
        "kdflow.student": summary["student"]["spec"],
        "kdflow.kd": json.dumps(kd_settings, sort_keys=True),
        "kdflow.version": code_version(),
        "kdflow.evaluated_against_champion": str(summary.get("champion_seen") or "none"),
    }
    if summary.get("seeds"):  # --seeds: the seed registered, and every seed's figures
        tags["kdflow.seeds"] = json.dumps({k: summary["seeds"][k] for k in ("chosen", "runs")})
    summary = dict(summary)
    with tempfile.TemporaryDirectory() as tmp:
        exported = (summary["student"].get("onnx") or {}).get("exported", True)
        if not exported:  # the evaluate step said why (a causal LM has no ONNX model)
            onnx_path = None
        elif onnx_path is None:
            onnx_path = export_checked(student_dir, Path(tmp))
        summary["registered"] = register_student(
            student_dir,
            summary,
            resolve_tracking_uri(tracking_uri),
            model_name,
            promote=promotion == "auto",
            tags=tags,
            onnx_path=onnx_path,
            policy=policy,
        )
    from kdflow.report.pages import log_summary_to_mlflow

    # The pictures and the report page, next to the student on the same MLflow run.
    registered = summary["registered"]
    if registered.get("run_id"):
        log_summary_to_mlflow(registered["tracking_uri"], registered["run_id"], summary)
    return summary
