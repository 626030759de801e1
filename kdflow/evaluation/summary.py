"""The evaluate step's numbers: every model on the test split, the student's ONNX export timed
beside them, the current champion on the same rows, and the gates, as the run summary.

Models come from any source (`kdflow.models.sources.load_saved`: the zoo, `python:`,
transformers); each reads the test split as it needs it (`TestRows`: a text model's rows
tokenized by its own tokenizer, once per tokenizer). The labels are the same rows for all.

The summary's keys are what the later steps, the report pages and the registry read. Each
model's entry has `latency_ms` (batch 1, the model alone on its encoded inputs: what the
speedup gate compares, `kdflow.evaluation.gates`) and `latency_text_ms` (a text model's
batch 1 from the raw text, tokenizing included; None for numeric models), see
`kdflow.evaluation.timing`. The student's `onnx` entry is `{"exported": False, "reason":
...}` when the student does not export to ONNX; a wrong export still fails the step.
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
from kdflow.data.prepared import DatasetMeta, Split
from kdflow.data.sources import DataSource, open_source
from kdflow.evaluation.gates import decide_gates
from kdflow.evaluation.metrics import ensemble_probabilities, logits_on, quality_metrics
from kdflow.evaluation.timing import (
    Timed,
    Timing,
    cpu_timings,
    model_flops,
    numeric_inputs,
    text_inputs,
    text_runner,
    torch_runner,
)
from kdflow.mlflow.client import DATASET_TAG, resolve_tracking_uri
from kdflow.mlflow.logged_models import download_model
from kdflow.mlflow.versions import champion_version, resolve_model_uri
from kdflow.models.onnx import (
    ONNX_FILE,
    OUTPUT_NAME,
    NotExportable,
    Parity,
    export_with_parity,
    input_name,
)
from kdflow.models.sources import encoder_of, load_saved
from kdflow.models.zoo import MLFLOW_URI_PREFIX, ModelSpec, count_params

log = logging.getLogger(__name__)

# The student's own entry also carries these, for its pictures and per-class table.
STUDENT_DETAIL = ("per_class_accuracy", "confusion_matrix", "reliability")
ENSEMBLE_KEYS = ("accuracy", "macro_f1", "ece", "nll", "per_class_accuracy", "reliability")
FROM_TEXT = " from text"
"""Suffix of a text model's timing from the raw text (tokenizing included)."""
PROBE_TEXT = "kdflow probe text"


class TestRows:
    """A split as each model reads it: its inputs encoded by the model's own encoder (once
    per encoder fingerprint; numeric columns once), and the labels, the same rows for all."""

    __test__ = False  # not a pytest class

    def __init__(self, data: DataSource, split: str = "test") -> None:
        self.data, self.split = data, split
        self.y = data.labels(split)
        self._inputs: dict[str | None, np.ndarray] = {}
        self._texts: list[list[str]] | None = None

    def of(self, model: nn.Module) -> Split:
        """The split's rows as `model` takes them."""
        encoder = encoder_of(model)
        key = None if encoder is None else encoder.fingerprint
        if key not in self._inputs:
            self._inputs[key] = self.data.read(self.split, encoder=encoder).x
        return Split(x=self._inputs[key], y=self.y)

    def texts(self) -> list[list[str]]:
        """The split's text columns, column-wise ([] for numeric data)."""
        if self._texts is None:
            self._texts = self.data.texts(self.split)
        return self._texts


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
    data = open_source(str(dataset_dir))
    meta = data.meta
    rows = TestRows(data)
    teachers = [load_saved(d) for d in teacher_dirs]
    student, student_spec = load_saved(student_dir)
    baseline, baseline_spec = load_saved(baseline_dir)
    teacher_z = [logits_on(m, rows.of(m)) for m, _ in teachers]
    ensemble = ensemble_probabilities(teacher_z)
    ensemble_pred = ensemble.argmax(-1).numpy()
    student_z = logits_on(student, rows.of(student))

    progress.emit("evaluate", 1, 3, "ONNX export and CPU timing")
    models = {f"t{i}": m for i, (m, _) in enumerate(teachers)}
    models |= {"student": student, "baseline": baseline}
    timings, onnx = _timed_with_onnx(models, student_z, rows, meta, onnx_dir)

    def entry(name: str, spec: str, folder: Path, probs: torch.Tensor) -> dict[str, Any]:
        return _model_entry(spec, models[name], folder, probs, timings, name, rows.y, meta,
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
    ensemble_quality = quality_metrics(ensemble, rows.y, meta.classes)
    summary["ensemble"] = {k: ensemble_quality[k] for k in ENSEMBLE_KEYS}
    summary["baseline"] = entry("baseline", describe(baseline_spec), baseline_dir,
                                torch.softmax(logits_on(baseline, rows.of(baseline)), -1))
    summary["student"] = entry("student", describe(student_spec), student_dir,
                               torch.softmax(student_z, -1))
    summary["student"]["onnx"] = onnx

    progress.emit("evaluate", 2, 3, "champion and gates")
    seen = champion_version(uri, model_name)
    summary["champion_seen"] = None if seen is None else int(seen.version)
    summary["champion"] = champion_on_test(tracking_uri, model_name, meta, rows, seen=seen)
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


def weights_bytes(folder: Path) -> int:
    """Bytes of the model's weights: every safetensors file in its folder (one, or a
    sharded transformers checkpoint's)."""
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def _runners(
    name: str, model: nn.Module, rows: TestRows, n_features: int
) -> dict[str, Timed]:
    """What `name` is timed on: random normal rows for a model of numeric columns; for a
    text model its own encoding of real test rows, and (`name from text`) the same rows as
    raw text, tokenizing included."""
    encoder = encoder_of(model)
    if encoder is None:
        one, many = numeric_inputs(n_features)
        return {name: Timed(torch_runner(model), one, many)}
    texts = rows.texts()
    if rows.y.size and texts:
        one, many, one_text, many_text = text_inputs(rows.of(model).x, texts)
    else:  # no test rows: a probe text stands in
        texts = [[PROBE_TEXT] for _ in range(max(1, len(rows.data.meta.text_columns)))]
        one, many, one_text, many_text = text_inputs(encoder.encode(texts), texts)
    return {
        name: Timed(torch_runner(model), one, many),
        name + FROM_TEXT: Timed(text_runner(model, encoder), one_text, many_text),
    }


def _timed_with_onnx(
    models: dict[str, nn.Module],
    student_z: torch.Tensor,
    rows: TestRows,
    meta: DatasetMeta,
    onnx_dir: Path | None,
) -> tuple[dict[str, Timing], dict[str, Any]]:
    """CPU timings of every model and of the student's ONNX export (under `onnx`), and the
    student's `onnx` entry: the export's size, timing and parity with PyTorch on the whole
    test split, or why it was not exported."""
    runners: dict[str, Timed] = {}
    for name, model in models.items():
        runners |= _runners(name, model, rows, meta.n_features)
    x = rows.of(models["student"]).x
    with tempfile.TemporaryDirectory() as tmp:
        path = (onnx_dir or Path(tmp)) / ONNX_FILE
        try:
            session, parity = export_with_parity(
                models["student"], x, path, x, student_z.numpy(), "the student's ONNX export"
            )
        except NotExportable as exc:
            reason = (str(exc).strip().splitlines() or ["not exported"])[0]
            log.warning("the student has no ONNX export: %s", reason)
            path.unlink(missing_ok=True)
            return cpu_timings(runners), {"exported": False, "reason": reason}
        name = input_name(session)
        student = runners["student"]
        runners["onnx"] = Timed(
            lambda b: session.run([OUTPUT_NAME], {name: b}), student.one, student.many
        )
        timings = cpu_timings(runners)
        return timings, _onnx_entry(timings, path.stat().st_size, parity)


def _model_entry(
    spec: str,
    model: nn.Module,
    folder: Path,
    probs: torch.Tensor,
    timings: dict[str, Timing],
    name: str,
    y: np.ndarray,
    meta: DatasetMeta,
    ensemble_pred: np.ndarray,
    detail: bool,
) -> dict[str, Any]:
    """One model's row of the summary: quality, size and speed (`detail`: the per-class
    numbers and the reliability bins too)."""
    quality = quality_metrics(probs, y, meta.classes, ensemble_pred)
    timing, text = timings[name], timings.get(name + FROM_TEXT)
    return {
        "spec": spec,
        "accuracy": quality["accuracy"],
        "params": count_params(model),
        "latency_ms": timing.latency_ms,
        "latency_p95_ms": timing.latency_p95_ms,
        "throughput_per_s": timing.throughput_per_s,
        "latency_text_ms": None if text is None else text.latency_ms,
        "throughput_text_per_s": None if text is None else text.throughput_per_s,
        "macro_f1": quality["macro_f1"],
        "ece": quality["ece"],
        "nll": quality["nll"],
        "agreement": quality["agreement"],
        "file_bytes": weights_bytes(folder),
        "flops": model_flops(model, meta.n_features),
        **({k: quality[k] for k in STUDENT_DETAIL} if detail else {}),
    }


def _onnx_entry(timings: dict[str, Timing], onnx_bytes: int, parity: Parity) -> dict[str, Any]:
    onnx = timings["onnx"]
    return {
        "exported": True,
        "latency_ms": onnx.latency_ms,
        "latency_p95_ms": onnx.latency_p95_ms,
        "throughput_per_s": onnx.throughput_per_s,
        "file_bytes": onnx_bytes,
        "speedup_vs_pytorch": (
            timings["student"].latency_ms / onnx.latency_ms if onnx.latency_ms > 0 else None
        ),
        "parity": parity.to_dict(),
    }


def same_schema(spec: dict[str, Any], meta: DatasetMeta) -> bool:
    """Whether a saved model reads this data and predicts its classes: the same class names,
    and the same text columns (text data) or feature columns (numeric data)."""
    if list(spec.get("class_names") or []) != list(meta.classes):
        return False
    if meta.kind == "text":
        return list(spec.get("text_columns") or []) == list(meta.text_columns)
    return list(spec.get("feature_names") or []) == list(meta.feature_columns)


def champion_on_test(
    tracking_uri: str | None,
    model_name: str,
    meta: DatasetMeta,
    test: Split | TestRows | DataSource,
    seen: Any = None,
) -> dict[str, Any] | None:
    """The current champion's metrics on this test split, or None when there is none (or it
    was trained on other features, text columns or classes).

    `test` is the data source (or its `TestRows`), so a text champion reads the rows through
    its own tokenizer; a `Split` serves a champion of numeric columns only. `seen` is the
    champion's ModelVersion when the caller has read it already; the version is downloaded
    by number, so the numbers belong to exactly that version.
    """
    uri = resolve_tracking_uri(tracking_uri)
    version = seen if seen is not None else champion_version(uri, model_name)
    if version is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        model, spec = load_saved(
            download_model(uri, f"models:/{model_name}/{version.version}", Path(tmp))
        )
        if not same_schema(spec, meta):
            log.warning("champion v%s was trained on other features or classes: not compared",
                        version.version)
            return None
        if isinstance(test, Split):
            if encoder_of(model) is not None:
                log.warning("champion v%s reads text: give the data source to compare it",
                            version.version)
                return None
            split = test
        else:
            split = (test if isinstance(test, TestRows) else TestRows(test)).of(model)
        probs = torch.softmax(logits_on(model, split), -1)
    quality = quality_metrics(probs, split.y, meta.classes)
    return {
        "version": int(version.version),
        "accuracy": quality["accuracy"],
        "macro_f1": quality["macro_f1"],
        "ece": quality["ece"],
        "dataset_sha256": (version.tags or {}).get(DATASET_TAG),
    }
