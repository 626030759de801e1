"""One function per pipeline step. Components are thin wrappers around these, and unit
tests call them directly, without KFP."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from kdflow import __version__
from kdflow.config import DataConfig, DistillConfig, GateConfig, TeacherConfig
from kdflow.errors import DataValidationError, KdflowError

log = logging.getLogger(__name__)


def validate_data(
    cfg: DataConfig,
    seed: int,
    dataset_dir: Path,
    report_path: Path,
    docs_dir: Path | None = None,
) -> dict[str, Any]:
    """Read the data, hold it to its contract, and write the prepared dataset folder.

    Writes the Markdown report before raising, so a failed run still shows what was wrong.
    """
    import pandas as pd

    from kdflow.contract import DataContract, default_contract
    from kdflow.data import (
        default_input_shape,
        frame_sha256,
        load_frame,
        split_frame,
        write_prepared,
    )
    from kdflow.validation import validate_frames

    input_shape = cfg.input_shape or default_input_shape(cfg.data)
    frame = load_frame(cfg.data, cfg.label_column)
    if cfg.test_data:
        train, test = frame, load_frame(cfg.test_data, cfg.label_column)
    else:
        train, test = None, None
    contract = (
        DataContract.from_yaml(cfg.contract)
        if cfg.contract
        else default_contract(cfg.label_column, input_shape=input_shape)
    )
    if train is None:
        # Validate the whole file before splitting: the label column must exist to stratify.
        report = validate_frames(frame, None, contract, docs_dir)
        if report.passed:
            train, test = split_frame(frame, cfg.label_column, cfg.test_fraction, seed)
            report = validate_frames(train, test, contract, docs_dir)
    else:
        report = validate_frames(train, test, contract, docs_dir)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(report.to_markdown())
    if not report.passed:
        if cfg.validation == "fail":
            raise DataValidationError(report.summary_line())
        log.warning(
            "data validation failed, continuing (--validation warn): %s", report.summary_line()
        )
    assert train is not None and test is not None
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
    )
    return {
        "sha256": meta.sha256,
        "rows": int(sum(v for k, v in meta.rows.items() if k != "val" or cfg.val_fraction > 0)),
        "splits": meta.rows,
        "classes": meta.classes,
        "features": meta.n_features,
        "input_shape": meta.input_shape,
        "validation": report.to_dict(),
        "passed": bool(report.passed),
    }


def train_teacher(
    dataset_dir: Path,
    spec: str,
    cfg: TeacherConfig,
    seed: int,
    model_dir: Path,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Train one teacher from a zoo spec, or import it from MLflow (`models:/name@alias`)."""
    import torch

    from kdflow.artifacts import load_model, save_model
    from kdflow.data import read_meta, read_split
    from kdflow.models import MLFLOW_URI_PREFIX, build_classifier, count_params, parse_spec
    from kdflow.training import accuracy, fit, seed_everything

    meta = read_meta(dataset_dir)
    val = read_split(dataset_dir, "val")
    if spec.startswith(MLFLOW_URI_PREFIX):
        from kdflow.registry import download_model, resolve_tracking_uri

        with tempfile.TemporaryDirectory() as tmp:
            folder = download_model(resolve_tracking_uri(tracking_uri), spec, Path(tmp))
            model, saved = load_model(folder)
            if saved["n_features"] != meta.n_features or saved["n_classes"] != meta.n_classes:
                raise DataValidationError(
                    f"teacher {spec} takes {saved['n_features']} features and "
                    f"{saved['n_classes']} classes; this data has {meta.n_features} and "
                    f"{meta.n_classes}"
                )
            shutil.copytree(folder, model_dir, dirs_exist_ok=True)
        return {
            "spec": spec,
            "val_accuracy": accuracy(model, val),
            "params": count_params(model),
            "epochs": 0,
        }
    train = read_split(dataset_dir, "train")
    seed_everything(seed)
    model = build_classifier(
        parse_spec(spec, "--teachers"), meta.input_shape, meta.n_classes, meta.n_features
    )
    x = torch.from_numpy(train.x)
    model.set_normalisation(x.mean(0), x.std(0))
    history = fit(
        model,
        train,
        val,
        epochs=cfg.teacher_epochs,
        lr=cfg.teacher_lr,
        batch_size=cfg.batch_size,
        seed=seed,
        on_epoch=lambda s: log.info(
            "teacher %s epoch %d loss %.4f val_acc %.4f", spec, s.epoch, s.loss, s.val_accuracy
        ),
    )
    save_model(model, model_dir, meta.classes, meta.feature_columns, {"role": "teacher"})
    return {
        "spec": spec,
        "val_accuracy": history.best.val_accuracy,
        "params": count_params(model),
        "epochs": cfg.teacher_epochs,
    }


def distill(
    dataset_dir: Path,
    teacher_dirs: list[Path],
    cfg: DistillConfig,
    seed: int,
    student_dir: Path,
    baseline_dir: Path,
    work_dir: Path,
    run_name: str,
) -> dict[str, Any]:
    from kdflow.distill import distill as run_distill

    return run_distill(
        dataset_dir, teacher_dirs, cfg, student_dir, baseline_dir, work_dir, run_name, seed
    )


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
) -> dict[str, Any]:
    """Test-split metrics for every model, the gates, and the run summary (not yet registered)."""
    from kdflow.artifacts import load_model
    from kdflow.data import read_meta, read_split
    from kdflow.evaluation import (
        accuracy_of_logits,
        cpu_latency_ms,
        decide_gates,
        ensemble_accuracy,
        logits_on,
        report_markdown,
    )
    from kdflow.models import ModelSpec, count_params

    meta = read_meta(dataset_dir)
    test = read_split(dataset_dir, "test")
    teachers = [load_model(d) for d in teacher_dirs]
    student, student_spec = load_model(student_dir)
    baseline, baseline_spec = load_model(baseline_dir)
    teacher_z = [logits_on(m, test) for m, _ in teachers]
    latency = cpu_latency_ms(
        {f"t{i}": m for i, (m, _) in enumerate(teachers)}
        | {"student": student, "baseline": baseline},
        meta.n_features,
    )

    def describe(spec: dict[str, Any]) -> str:
        source = spec.get("source")
        return (
            str(source)
            if source
            else str(
                ModelSpec(
                    spec["model"]["arch"], {k: v for k, v in spec["model"].items() if k != "arch"}
                )
            )
        )

    summary: dict[str, Any] = {
        "dataset": dataset_info,
        "teachers": [
            {
                "spec": describe(spec),
                "accuracy": accuracy_of_logits(z, test.y),
                "params": count_params(m),
                "latency_ms": latency[f"t{i}"],
            }
            for i, ((m, spec), z) in enumerate(zip(teachers, teacher_z, strict=True))
        ],
        "ensemble": {"accuracy": ensemble_accuracy(teacher_z, test.y)},
    }
    for name, model, spec in (
        ("baseline", baseline, baseline_spec),
        ("student", student, student_spec),
    ):
        summary[name] = {
            "spec": describe(spec),
            "accuracy": accuracy_of_logits(logits_on(model, test), test.y),
            "params": count_params(model),
            "latency_ms": latency[name],
        }
    summary["champion"] = champion_on_test(tracking_uri, model_name, meta, test)
    gates = decide_gates(
        gates_cfg,
        student=summary["student"],
        baseline=summary["baseline"],
        ensemble_acc=summary["ensemble"]["accuracy"],
        teachers=summary["teachers"],
        champion=summary["champion"],
    )
    summary["gates"] = {
        g.name: {k: v for k, v in g.to_dict().items() if k != "name"} for g in gates
    }
    summary["passed"] = all(g.passed for g in gates)
    summary["registered"] = None
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(report_markdown(summary))
    return summary


def champion_on_test(
    tracking_uri: str | None, model_name: str, meta: Any, test: Any
) -> dict[str, Any] | None:
    """The current champion's accuracy on this test split, or None when there is none."""
    from kdflow.artifacts import load_model
    from kdflow.evaluation import accuracy_of_logits, logits_on
    from kdflow.registry import champion_version, download_model, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    version = champion_version(uri, model_name)
    if version is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        model, spec = load_model(download_model(uri, f"models:/{model_name}@champion", Path(tmp)))
    if spec["feature_names"] != meta.feature_columns or spec["class_names"] != meta.classes:
        log.warning(
            "champion v%s was trained on other features or classes: not compared", version.version
        )
        return None
    return {
        "version": int(version.version),
        "accuracy": accuracy_of_logits(logits_on(model, test), test.y),
    }


def register(
    student_dir: Path,
    summary: dict[str, Any],
    tracking_uri: str | None,
    model_name: str,
    promotion: str,
    run_id: str,
    kd_settings: dict[str, Any],
) -> dict[str, Any]:
    """Register the student (only called when every gate passed) and return the summary."""
    from kdflow.registry import register_student, resolve_tracking_uri

    if not summary.get("passed"):
        raise KdflowError("refusing to register: a gate failed (see the evaluation report)")
    tags = {
        "kdflow.run_id": run_id,
        "kdflow.dataset_sha256": summary["dataset"]["sha256"],
        "kdflow.validation_passed": str(summary["dataset"].get("passed", True)).lower(),
        "kdflow.teachers": json.dumps([t["spec"] for t in summary["teachers"]]),
        "kdflow.student": summary["student"]["spec"],
        "kdflow.kd": json.dumps(kd_settings, sort_keys=True),
        "kdflow.version": __version__,
    }
    summary = dict(summary)
    summary["registered"] = register_student(
        student_dir,
        summary,
        resolve_tracking_uri(tracking_uri),
        model_name,
        promote=promotion == "auto",
        tags=tags,
    )
    return summary
