"""The evaluate step's numbers: every model on the test split, the student's ONNX export timed
beside them, the current champion on the same rows, and the gates, as the run summary.

The summary's keys are what the later steps, the report pages and the registry read.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdflow import progress
from kdflow.config import GateConfig
from kdflow.data.prepared import DatasetMeta, Split, read_meta, read_split
from kdflow.evaluation.gates import decide_gates
from kdflow.evaluation.metrics import ensemble_probabilities, logits_on, quality_metrics
from kdflow.evaluation.timing import Timing, cpu_timings, flops_per_sample, torch_runner
from kdflow.mlflow.client import DATASET_TAG, resolve_tracking_uri
from kdflow.mlflow.logged_models import download_model
from kdflow.mlflow.versions import champion_version, resolve_model_uri
from kdflow.models.artifacts import WEIGHTS, load_model
from kdflow.models.onnx import INPUT_NAME, ONNX_FILE, OUTPUT_NAME, Parity, export_with_parity
from kdflow.models.zoo import MLFLOW_URI_PREFIX, ModelSpec, count_params

log = logging.getLogger(__name__)

# The student's own entry also carries these, for its pictures and per-class table.
STUDENT_DETAIL = ("per_class_accuracy", "confusion_matrix", "reliability")
ENSEMBLE_KEYS = ("accuracy", "macro_f1", "ece", "nll", "per_class_accuracy", "reliability")


def evaluate_models(
    dataset_dir: Path,
    teacher_dirs: list[Path],
    student_dir: Path,
    baseline_dir: Path,
    gates_cfg: GateConfig,
    tracking_uri: str | None,
    model_name: str,
    dataset_info: dict[str, Any],
    teacher_sources: list[str] | None = None,
    onnx_dir: Path | None = None,
    histories: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run summary: test-split metrics and CPU cost of every model, the student's ONNX
    export, the champion on the same rows, and the gates (`registered` is still None).

    The arguments are those of `kdflow.steps.evaluate`, which documents them.
    """
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
    models = {f"t{i}": m for i, (m, _) in enumerate(teachers)}
    models |= {"student": student, "baseline": baseline}
    timings, onnx_bytes, parity = _timed_with_onnx(models, student_z, test, meta, onnx_dir)

    def entry(name: str, spec: str, folder: Path, probs: torch.Tensor) -> dict[str, Any]:
        return _model_entry(spec, models[name], folder, probs, timings[name], test, meta,
                            ensemble_pred, detail=name == "student")

    uri = resolve_tracking_uri(tracking_uri)
    sources = list(teacher_sources or [])
    summary: dict[str, Any] = {"dataset": dataset_info, "teachers": []}
    for i, ((_, spec), z, folder) in enumerate(
        zip(teachers, teacher_z, teacher_dirs, strict=True)
    ):
        given = sources[i] if i < len(sources) and sources[i] else describe(spec)
        teacher = entry(f"t{i}", given, folder, torch.softmax(z, -1))
        if given.startswith(MLFLOW_URI_PREFIX):
            teacher["registry"] = resolve_model_uri(uri, given)
        summary["teachers"].append(teacher)
    ensemble_quality = quality_metrics(ensemble, test.y, meta.classes)
    summary["ensemble"] = {k: ensemble_quality[k] for k in ENSEMBLE_KEYS}
    summary["baseline"] = entry("baseline", describe(baseline_spec), baseline_dir,
                                torch.softmax(logits_on(baseline, test), -1))
    summary["student"] = entry("student", describe(student_spec), student_dir,
                               torch.softmax(student_z, -1))
    summary["student"]["onnx"] = _onnx_entry(timings, onnx_bytes, parity)

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
    return summary


def describe(spec: dict[str, Any]) -> str:
    """How a saved model's spec.json names it: its source as given (`hf:...`), or its zoo
    spec (`mlp:hidden=16`)."""
    source = spec.get("source")
    if source:
        return str(source)
    model = spec["model"]
    return str(ModelSpec(model["arch"], {k: v for k, v in model.items() if k != "arch"}))


def _timed_with_onnx(
    models: dict[str, nn.Module],
    student_z: torch.Tensor,
    test: Split,
    meta: DatasetMeta,
    onnx_dir: Path | None,
) -> tuple[dict[str, Timing], int, Parity]:
    """CPU timings of every model and of the student's ONNX export (under `onnx`), the
    export's size, and its parity with PyTorch on the whole test split."""
    with tempfile.TemporaryDirectory() as tmp:
        path = (onnx_dir or Path(tmp)) / ONNX_FILE
        session, parity = export_with_parity(
            models["student"], meta.n_features, path, test.x, student_z.numpy(),
            "the student's ONNX export",
        )
        runners = {name: torch_runner(m) for name, m in models.items()}
        runners["onnx"] = lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})
        timings = cpu_timings(runners, meta.n_features)
        return timings, path.stat().st_size, parity


def _model_entry(
    spec: str,
    model: nn.Module,
    folder: Path,
    probs: torch.Tensor,
    timing: Timing,
    test: Split,
    meta: DatasetMeta,
    ensemble_pred: np.ndarray,
    detail: bool,
) -> dict[str, Any]:
    """One model's row of the summary: quality, size and speed (`detail`: the per-class
    numbers and the reliability bins too)."""
    quality = quality_metrics(probs, test.y, meta.classes, ensemble_pred)
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
        **({k: quality[k] for k in STUDENT_DETAIL} if detail else {}),
    }


def _onnx_entry(timings: dict[str, Timing], onnx_bytes: int, parity: Parity) -> dict[str, Any]:
    onnx = timings["onnx"]
    return {
        "latency_ms": onnx.latency_ms,
        "latency_p95_ms": onnx.latency_p95_ms,
        "throughput_per_s": onnx.throughput_per_s,
        "file_bytes": onnx_bytes,
        "speedup_vs_pytorch": (
            timings["student"].latency_ms / onnx.latency_ms if onnx.latency_ms > 0 else None
        ),
        "parity": parity.to_dict(),
    }


def champion_on_test(
    tracking_uri: str | None,
    model_name: str,
    meta: DatasetMeta,
    test: Split,
    seen: Any = None,
) -> dict[str, Any] | None:
    """The current champion's metrics on this test split, or None when there is none (or it
    was trained on other features or classes).

    `seen` is the champion's ModelVersion when the caller has read it already; the version
    is downloaded by number, so the numbers belong to exactly that version.
    """
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
