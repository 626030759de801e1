"""One function per pipeline step. Components are thin wrappers around these, and unit
tests call them directly, without KFP."""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kdflow import progress
from kdflow.config import BUILTIN_PREFIX, DataConfig, DistillConfig, GateConfig, TeacherConfig
from kdflow.data import storage
from kdflow.errors import DataValidationError, KdflowError

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

    from kdflow.data.prepared import (
        default_input_shape,
        frame_sha256,
        load_frame,
        split_frame,
        write_prepared,
    )
    from kdflow.mlflow.tracking import record_validation
    from kdflow.validation.contract import DataContract, default_contract
    from kdflow.validation.dataset import validate_dataset, validate_frames

    progress.emit("validate data", 0, 3, "contract checks")
    input_shape = cfg.input_shape or default_input_shape(cfg.data)
    contract = (
        DataContract.from_yaml(cfg.contract)
        if cfg.contract
        else default_contract(cfg.label_column, input_shape=input_shape)
    )
    if cfg.data.startswith(BUILTIN_PREFIX):
        frame = load_frame(cfg.data, cfg.label_column)
        report = validate_frames(frame, None, contract, docs_dir)
    else:
        # Files are validated by streaming them (bounded memory) before anything loads them.
        report = validate_dataset(cfg.data, cfg.test_data, contract, docs_dir)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(report.to_markdown())
    if not report.passed:
        if cfg.validation == "fail":
            if run_id:
                record_validation(tracking_uri, run_id, cfg.data,
                                  {"passed": False, "validation": report.to_dict()}, report_path)
            report.raise_for_failures()
        log.warning(
            "data validation failed, continuing (--validation warn): %s", report.summary_line()
        )
    progress.emit("validate data", 1, 3, "splits")
    if not cfg.data.startswith(BUILTIN_PREFIX):
        frame = load_frame(cfg.data, cfg.label_column)
    if cfg.test_data:
        train, test = frame, load_frame(cfg.test_data, cfg.label_column)
    else:
        train, test = split_frame(frame, cfg.label_column, cfg.test_fraction, seed)
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
    progress.emit("validate data", 3, 3, report.summary_line())
    splits = {"train": train, "val": val, "test": test}
    info = {
        "sha256": meta.sha256,
        "rows": int(sum(v for k, v in meta.rows.items() if k != "val" or cfg.val_fraction > 0)),
        "splits": meta.rows,
        "classes": meta.classes,
        "features": meta.n_features,
        "input_shape": meta.input_shape,
        # Class balance of each prepared split, for the data profile picture.
        "class_counts": {
            name: {str(c): int(n) for c, n in split[cfg.label_column].value_counts().items()}
            for name, split in splits.items()
            if name != "val" or cfg.val_fraction > 0
        },
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
    from kdflow.distill.training import member_seed
    from kdflow.models.zoo import AUTO, resolve_teachers

    meta = read_meta(dataset_dir)
    specs = resolve_teachers(cfg.teachers, meta.input_shape)
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
    """Train ensemble member `index` from a zoo spec with its own `seed` (`plan_teachers`),
    or import it from MLflow (`models:/name@alias`)."""
    import torch

    from kdflow.data.prepared import read_meta, read_split
    from kdflow.distill.training import accuracy, fit, limit_threads, seed_everything
    from kdflow.models.artifacts import load_model, save_model
    from kdflow.models.zoo import MLFLOW_URI_PREFIX, build_classifier, count_params, parse_spec

    limit_threads()  # a pod's CPU limit, not the node's cores
    meta = read_meta(dataset_dir)
    val = read_split(dataset_dir, "val")
    if spec.startswith(MLFLOW_URI_PREFIX):
        from kdflow.mlflow.registry import download_model, resolve_tracking_uri

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
            "seed": seed,
            "index": index,
            "history": [],
        }
    train = read_split(dataset_dir, "train")
    seed_everything(seed)
    model = build_classifier(
        parse_spec(spec, "--teachers"), meta.input_shape, meta.n_classes, meta.n_features
    )
    # The split is a read-only view: its statistics come from numpy, no tensor over it.
    model.set_normalisation(
        torch.from_numpy(train.x.mean(0)), torch.from_numpy(train.x.std(0, ddof=1))
    )
    history = fit(
        model,
        train,
        val,
        epochs=cfg.teacher_epochs,
        lr=cfg.teacher_lr,
        batch_size=cfg.batch_size,
        seed=seed,
        on_epoch=lambda s: _teacher_epoch(spec, s, cfg.teacher_epochs),
    )
    save_model(
        model,
        model_dir,
        meta.classes,
        meta.feature_columns,
        {"role": "teacher", "seed": seed, "index": index},
    )
    return {
        "spec": spec,
        "val_accuracy": history.best.val_accuracy,
        "params": count_params(model),
        "epochs": cfg.teacher_epochs,
        "seed": seed,
        "index": index,
        "history": [asdict(e) for e in history.epochs],
    }


def _teacher_epoch(spec: str, stats: Any, epochs: int) -> None:
    log.info(
        "teacher %s epoch %d loss %.4f val_acc %.4f",
        spec, stats.epoch, stats.loss, stats.val_accuracy,
    )
    progress.emit(f"teacher {spec}", stats.epoch, epochs, f"val acc {stats.val_accuracy:.3f}")


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
) -> dict[str, Any]:
    """Distil (`kdflow.distill.driver.distill`), with progress per epoch; with `record_as` (the
    pipeline run id) the per-epoch curves go to that run's MLflow run too."""
    from kdflow.distill.driver import distill as run_distill
    from kdflow.mlflow.tracking import record_training

    progress.emit("teacher inference", 0, len(teacher_dirs))
    watcher = None
    if not cfg.ray_address:
        run_dir = storage.join(cfg.storage_path or str(work_dir), "ray", run_name)
        watcher = _EpochWatcher(run_dir, cfg.student_epochs)
        watcher.start()
    try:
        result = run_distill(
            dataset_dir, teacher_dirs, cfg, student_dir, baseline_dir, work_dir, run_name, seed
        )
    finally:
        if watcher is not None:
            watcher.stop()
    if record_as:
        result["mlflow_run_id"] = record_training(tracking_uri, record_as, result)
    return result


class _EpochWatcher(threading.Thread):
    """Reports the student's epochs as Ray Train records their checkpoints.

    The epochs run in Ray Train workers; the controller's checkpoint snapshot in the run
    folder is where the driver sees them without reaching into the training loop. An
    in-process run (`workers=0`) has no controller: its own checkpoint pointer says the same.
    """

    def __init__(self, run_dir: str, epochs: int, every_s: float = 1.0) -> None:
        from kdflow.distill.driver import IN_PROCESS_LATEST

        super().__init__(name="kdflow-epoch-watcher", daemon=True)
        self.snapshot = storage.join(run_dir, "checkpoint_manager_snapshot.json")
        self.pointer = storage.join(run_dir, IN_PROCESS_LATEST)
        self.epochs, self.every_s = epochs, every_s
        self.done = threading.Event()
        self.seen = 0

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            self.poll()
        self.poll()

    def poll(self) -> None:
        try:
            if storage.exists(self.snapshot):
                latest = storage.read_json(self.snapshot).get("latest_checkpoint_result") or {}
            elif storage.exists(self.pointer):
                latest = storage.read_json(self.pointer)
            else:
                return
        except (KdflowError, ValueError):  # caught mid-write: the next poll reads it whole
            return
        metrics = latest.get("metrics") or {}
        epoch = int(metrics.get("epoch", 0))
        if epoch > self.seen:
            self.seen = epoch
            acc = metrics.get("student/val_accuracy")
            info = "" if acc is None else f"student val acc {float(acc):.3f}"
            progress.emit("distill epochs", epoch, self.epochs, info)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)


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
) -> dict[str, Any]:
    """Test-split metrics for every model, the gates, and the run summary (not yet registered).

    `histories` are the training curves, `{"teachers": [[epoch, ...], ...], "student": [...],
    "baseline": [...]}` (each epoch a dict of losses and val accuracy), kept in the summary
    for the pictures.

    `teacher_sources` are the teachers' specs as given (an MLflow URI for an imported
    teacher, recorded with the version it resolves to); `onnx_dir` receives the student's
    ONNX export (`model.onnx`), checked against PyTorch on the whole test split.
    """
    import torch

    from kdflow.data.prepared import read_meta, read_split
    from kdflow.evaluation.metrics import (
        cpu_timings,
        decide_gates,
        ensemble_probabilities,
        flops_per_sample,
        logits_on,
        quality_metrics,
        report_markdown,
        torch_runner,
    )
    from kdflow.mlflow.registry import champion_version, resolve_model_uri, resolve_tracking_uri
    from kdflow.models.artifacts import WEIGHTS, load_model
    from kdflow.models.onnx import (
        INPUT_NAME,
        ONNX_FILE,
        OUTPUT_NAME,
        check_parity,
        export_onnx,
        onnx_session,
        require_parity,
        run_onnx,
    )
    from kdflow.models.zoo import MLFLOW_URI_PREFIX, count_params

    progress.emit("evaluate", 0, 3, "test-split predictions")
    meta = read_meta(dataset_dir)
    test = read_split(dataset_dir, "test")
    teachers = [load_model(d) for d in teacher_dirs]
    student, student_spec = load_model(student_dir)
    baseline, baseline_spec = load_model(baseline_dir)
    teacher_z = [logits_on(m, test) for m, _ in teachers]
    ensemble = ensemble_probabilities(teacher_z)
    ensemble_pred = ensemble.argmax(-1).numpy()
    student_z = logits_on(student, test)

    progress.emit("evaluate", 1, 3, "ONNX export and CPU timing")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(student, meta.n_features, (onnx_dir or Path(tmp)) / ONNX_FILE)
        session = onnx_session(onnx_path)
        parity = check_parity(student_z.numpy(), run_onnx(session, test.x))
        require_parity(parity, "the student's ONNX export")
        runners = {f"t{i}": torch_runner(m) for i, (m, _) in enumerate(teachers)} | {
            "student": torch_runner(student),
            "baseline": torch_runner(baseline),
            "onnx": lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x}),
        }
        timings = cpu_timings(runners, meta.n_features)
        onnx_bytes = onnx_path.stat().st_size

    def describe(spec: dict[str, Any]) -> str:
        from kdflow.models.zoo import ModelSpec

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

    def entry(name: str, spec: str, model: Any, folder: Path, probs: Any) -> dict[str, Any]:
        quality = quality_metrics(probs, test.y, meta.classes, ensemble_pred)
        timing = timings[name]
        return {
            "spec": spec,
            "accuracy": quality["accuracy"],
            "params": count_params(model),
            "latency_ms": timing.latency_ms,
            "latency_p95_ms": timing.latency_p95_ms,
            "throughput_per_s": timing.throughput_per_s,
            "macro_f1": quality["macro_f1"],
            "ece": quality["ece"],
            "nll": quality["nll"],
            "agreement": quality["agreement"],
            "file_bytes": (folder / WEIGHTS).stat().st_size,
            "flops": flops_per_sample(model, meta.n_features),
            **(
                {k: quality[k] for k in ("per_class_accuracy", "confusion_matrix", "reliability")}
                if name == "student"
                else {}
            ),
        }

    uri = resolve_tracking_uri(tracking_uri)
    sources = list(teacher_sources or [])
    summary: dict[str, Any] = {"dataset": dataset_info, "teachers": []}
    for i, ((model, spec), z, folder) in enumerate(
        zip(teachers, teacher_z, teacher_dirs, strict=True)
    ):
        given = sources[i] if i < len(sources) and sources[i] else describe(spec)
        teacher = entry(f"t{i}", given, model, folder, torch.softmax(z, -1))
        if given.startswith(MLFLOW_URI_PREFIX):
            teacher["registry"] = resolve_model_uri(uri, given)
        summary["teachers"].append(teacher)
    ensemble_quality = quality_metrics(ensemble, test.y, meta.classes)
    summary["ensemble"] = {
        k: ensemble_quality[k]
        for k in ("accuracy", "macro_f1", "ece", "nll", "per_class_accuracy", "reliability")
    }
    summary["baseline"] = entry(
        "baseline",
        describe(baseline_spec),
        baseline,
        baseline_dir,
        torch.softmax(logits_on(baseline, test), -1),
    )
    summary["student"] = entry(
        "student", describe(student_spec), student, student_dir, torch.softmax(student_z, -1)
    )
    onnx_timing = timings["onnx"]
    summary["student"]["onnx"] = {
        "latency_ms": onnx_timing.latency_ms,
        "latency_p95_ms": onnx_timing.latency_p95_ms,
        "throughput_per_s": onnx_timing.throughput_per_s,
        "file_bytes": onnx_bytes,
        "speedup_vs_pytorch": (
            timings["student"].latency_ms / onnx_timing.latency_ms
            if onnx_timing.latency_ms > 0
            else None
        ),
        "parity": parity.to_dict(),
    }
    progress.emit("evaluate", 2, 3, "champion and gates")
    seen = champion_version(uri, model_name)
    summary["champion_seen"] = None if seen is None else int(seen.version)
    summary["champion"] = champion_on_test(tracking_uri, model_name, meta, test, seen=seen)
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
    summary["history"] = histories or {}
    progress.emit("evaluate", 3, 3, "gates passed" if summary["passed"] else "a gate failed")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(report_markdown(summary))
    return summary


def champion_on_test(
    tracking_uri: str | None, model_name: str, meta: Any, test: Any, seen: Any = None
) -> dict[str, Any] | None:
    """The current champion's metrics on this test split, or None when there is none.

    `seen` is the champion's ModelVersion when the caller has read it already; the version
    is downloaded by number, so the numbers belong to exactly that version.
    """
    import torch

    from kdflow.evaluation.metrics import logits_on, quality_metrics
    from kdflow.mlflow.registry import (
        DATASET_TAG,
        champion_version,
        download_model,
        resolve_tracking_uri,
    )
    from kdflow.models.artifacts import load_model

    uri = resolve_tracking_uri(tracking_uri)
    version = seen if seen is not None else champion_version(uri, model_name)
    if version is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        model, spec = load_model(
            download_model(uri, f"models:/{model_name}/{version.version}", Path(tmp))
        )
    if spec["feature_names"] != meta.feature_columns or spec["class_names"] != meta.classes:
        log.warning(
            "champion v%s was trained on other features or classes: not compared", version.version
        )
        return None
    quality = quality_metrics(torch.softmax(logits_on(model, test), -1), test.y, meta.classes)
    return {
        "version": int(version.version),
        "accuracy": quality["accuracy"],
        "macro_f1": quality["macro_f1"],
        "ece": quality["ece"],
        "dataset_sha256": (version.tags or {}).get(DATASET_TAG),
    }


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
    again here. `policy` is a `kdflow.mlflow.registry.RetryPolicy` (default: its defaults).
    """
    from kdflow.mlflow.registry import code_version, register_student, resolve_tracking_uri

    if not summary.get("passed"):
        raise KdflowError("refusing to register: a gate failed (see the evaluation report)")
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
    summary = dict(summary)
    with tempfile.TemporaryDirectory() as tmp:
        if onnx_path is None:
            onnx_path = _export_checked(student_dir, Path(tmp))
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


def _export_checked(student_dir: Path, folder: Path) -> Path:
    """Export the student to ONNX and check it on rows drawn around the training mean."""
    import numpy as np
    import torch

    from kdflow.models.artifacts import load_model
    from kdflow.models.onnx import (
        ONNX_FILE,
        check_parity,
        export_onnx,
        onnx_session,
        require_parity,
        run_onnx,
    )

    model, spec = load_model(student_dir)
    path = export_onnx(model, int(spec["n_features"]), folder / ONNX_FILE)
    state = model.state_dict()
    rng = np.random.default_rng(0)
    x = (
        rng.standard_normal((256, int(spec["n_features"]))) * state["std"].numpy()
        + state["mean"].numpy()
    ).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    require_parity(check_parity(expected, run_onnx(onnx_session(path), x)))
    return path
