"""The evaluate step's numbers: every model on the test split, the student's ONNX export timed
beside them, the current champion on the same rows, and the gates, as the run summary.

Models come from any source (`kdflow.models.sources.load_saved`: the zoo, `python:`,
transformers); each reads the test split as it needs it (`TestRows`: a text model's rows
tokenized by its own tokenizer). The labels are the same rows for all. Predictions stream
the split chunk by chunk (`TestRows.logits`): what stays in memory is each model's logits
and the labels, not the inputs; the timings and the ONNX parity read the first
SAMPLE_ROWS rows.

The summary's keys are what the later steps, the report pages and the registry read. Each
model's entry has `latency_ms` (batch 1, the model alone on its encoded inputs: what the
speedup gate compares, `kdflow.evaluation.gates`) and `latency_text_ms` (a text model's
batch 1 from the raw text, tokenizing included; None for numeric models), see
`kdflow.evaluation.timing`. On image data the models are timed on the test pixels (uint8,
their input), and the student's and the ensemble's entries add `latency_image_ms` and
`throughput_image_per_s`: from the image files' bytes, decoding included. The student's
`onnx` entry is `{"exported": False, "reason": ...}` when the student does not export to
ONNX; a wrong export still fails the step.

On image data `misclassified` holds the student's most confident mistakes on the test
split (up to MISCLASSIFIED_SHOWN, each with the true class, the student's and the
ensemble's top class) and their thumbnails, so the report draws them from the summary
alone (`kdflow.report.plots.misclassified_grid`): the summary is what travels between the
pipeline's steps, and the register step, which puts the report on MLflow, has no dataset.
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
from kdflow.evaluation.gates import Outcomes, decide_gates
from kdflow.evaluation.metrics import (
    ensemble_probabilities,
    logits_on,
    misclassified,
    quality_metrics,
)
from kdflow.evaluation.timing import (
    THROUGHPUT_BATCH,
    Timed,
    Timing,
    cpu_timings,
    image_inputs,
    image_runner,
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
FROM_IMAGE = " from image"
"""Suffix of an image model's timing from the image files' bytes (decoding included)."""
ENSEMBLE = "ensemble"
MISCLASSIFIED_SHOWN = 16
"""Test images the student gets wrong that the report shows (a 4 × 4 grid)."""
THUMBNAIL_SIDE = 32
"""Largest side, in pixels, of a misclassified image's thumbnail in the summary: the size
of the usual distillation benchmarks' images (MNIST, CIFAR), which stay as they are; larger
images are shrunk so that 16 of them stay a few tens of KiB in the summary."""


SAMPLE_ROWS = 4096
"""Test rows the timings and the ONNX parity read (the first ones): batches of up to 256
are timed, and 4,096 rows are ample to tell an export that predicts otherwise."""
CHUNK_ROWS = 65_536
"""Test rows a model predicts at a time (the prepared splits' row groups)."""


class TestRows:
    """A split as each model reads it: its inputs encoded by the model's own encoder, and
    the labels, the same rows for all. `logits` streams the split; `of` holds its first
    SAMPLE_ROWS rows (once per encoder fingerprint; numeric columns once)."""

    __test__ = False  # not a pytest class

    def __init__(self, data: DataSource, split: str = "test") -> None:
        self.data, self.split = data, split
        self.y = data.labels(split)
        self._inputs: dict[str | None, np.ndarray] = {}
        self._texts: list[list[str]] | None = None
        self._images: list[bytes] | None = None

    def of(self, model: nn.Module) -> Split:
        """The split's first SAMPLE_ROWS rows as `model` takes them."""
        encoder = encoder_of(model)
        key = None if encoder is None else encoder.fingerprint
        if key not in self._inputs:
            self._inputs[key] = self.data.read(self.split, 0, SAMPLE_ROWS, encoder=encoder).x
        x = self._inputs[key]
        return Split(x=x, y=self.y[: len(x)])

    def logits(self, model: nn.Module, spec: dict[str, Any] | None = None) -> torch.Tensor:
        """`model`'s logits on every row, CHUNK_ROWS rows read at a time (its columns
        taken by name when `spec` names them: `by_name`)."""
        encoder = encoder_of(model)
        parts = []
        for start in range(0, len(self.y), CHUNK_ROWS):
            split = self.data.read(self.split, start, start + CHUNK_ROWS, encoder=encoder)
            parts.append(logits_on(model, split if spec is None
                                   else by_name(split, spec, self.data.meta)))
        if not parts:  # no rows: the model's output width from one probe row
            return logits_on(model, self.of(model))[:0]
        return torch.cat(parts)

    def texts(self) -> list[list[str]]:
        """The first SAMPLE_ROWS rows' text columns, column-wise ([] for numeric data)."""
        if self._texts is None:
            self._texts = self.data.texts(self.split, 0, SAMPLE_ROWS)
        return self._texts

    def images(self, rows: int = THROUGHPUT_BATCH) -> list[bytes]:
        """The original files' bytes of the split's first `rows` images ([] for other
        data), read once (the first call's `rows`): what the image timings decode."""
        if self._images is None:
            read = getattr(self.data, "images", None)
            self._images = list(read(self.split, 0, rows)) if callable(read) else []
        return self._images[:rows]


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
    data = open_source(str(dataset_dir))
    meta = data.meta
    if meta.kind == "corpus":
        from kdflow.evaluation.lm_summary import evaluate_lm_models

        return evaluate_lm_models(
            dataset_dir, teacher_dirs, student_dir, baseline_dir, gates_cfg, tracking_uri,
            model_name, dataset_info, teacher_sources, histories,
        )
    progress.emit("evaluate", 0, 3, "test-split predictions")
    rows = TestRows(data)
    teachers = [load_saved(d) for d in teacher_dirs]
    student, student_spec = load_saved(student_dir)
    baseline, baseline_spec = load_saved(baseline_dir)
    teacher_z = [rows.logits(m) for m, _ in teachers]
    ensemble = ensemble_probabilities(teacher_z)
    ensemble_pred = ensemble.argmax(-1).numpy()
    student_z = rows.logits(student)

    progress.emit("evaluate", 1, 3, "ONNX export and CPU timing")
    models = {f"t{i}": m for i, (m, _) in enumerate(teachers)}
    models |= {"student": student, "baseline": baseline}
    timings, onnx = _timed_with_onnx(models, student_z, rows, meta, onnx_dir,
                                     gates_cfg.latency_batch)

    def entry(name: str, spec: str, folder: Path, probs: torch.Tensor) -> dict[str, Any]:
        return _model_entry(spec, models[name], folder, probs, timings, name, rows.y, meta,
                            ensemble_pred, detail=name == "student")

    uri = resolve_tracking_uri(tracking_uri)
    sources = list(teacher_sources or [])
    summary: dict[str, Any] = {"dataset": dataset_info, "teachers": [],
                               "latency_batch": gates_cfg.latency_batch}
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
    baseline_z = rows.logits(baseline)
    summary["baseline"] = entry("baseline", describe(baseline_spec), baseline_dir,
                                torch.softmax(baseline_z, -1))
    summary["student"] = entry("student", describe(student_spec), student_dir,
                               torch.softmax(student_z, -1))
    summary["student"]["onnx"] = onnx
    if meta.kind == "image":
        summary["student"] |= _image_timing(timings, "student")
        summary["ensemble"] |= _image_timing(timings, ENSEMBLE)
        summary["misclassified"] = misclassified_images(
            rows, torch.softmax(student_z, -1), ensemble, meta
        )

    progress.emit("evaluate", 2, 3, "champion and gates")
    seen = champion_version(uri, model_name)
    summary["champion_seen"] = None if seen is None else int(seen.version)
    summary["champion"], not_compared = champion_comparison(
        tracking_uri, model_name, meta, rows, seen=seen
    )
    outcomes = Outcomes(
        y=np.asarray(rows.y), student=student_z.argmax(-1).numpy(),
        baseline=baseline_z.argmax(-1).numpy(), ensemble=ensemble_pred,
        classes=[str(c) for c in meta.classes],
        champion=(summary["champion"] or {}).pop("predictions", None),
    )
    gates = decide_gates(
        gates_cfg,
        student=summary["student"],
        baseline=summary["baseline"],
        ensemble_acc=summary["ensemble"]["accuracy"],
        teachers=summary["teachers"],
        champion=summary["champion"],
        champion_unscored=not_compared,
        outcomes=outcomes,
    )
    summary["gates"] = {
        g.name: {k: v for k, v in g.to_dict().items() if k != "name"} for g in gates
    }
    summary["passed"] = all(g.passed for g in gates)
    summary["registered"] = None
    summary["history"] = histories or {}
    progress.emit("evaluate", 3, 3, "gates passed" if summary["passed"] else "a gate did not pass")
    return summary


def _image_timing(timings: dict[str, Timing], name: str) -> dict[str, Any]:
    """`name`'s figures from the image files' bytes, decoding included (None without test
    images): batch-1 latency and the throughput at THROUGHPUT_BATCH."""
    timing = timings.get(name + FROM_IMAGE)
    return {
        "latency_image_ms": None if timing is None else timing.latency_ms,
        "throughput_image_per_s": None if timing is None else timing.throughput_per_s,
    }


MISCLASSIFIED_ROLES = {"predicted": "student", "probability": "student_probability",
                       "reference": "ensemble", "reference_probability": "ensemble_probability"}
"""How `kdflow.evaluation.metrics.misclassified`'s keys read in the summary."""


def misclassified_images(
    rows: TestRows, student: torch.Tensor, ensemble: torch.Tensor, meta: DatasetMeta
) -> dict[str, Any]:
    """The student's most confident mistakes on the test images (MISCLASSIFIED_SHOWN at
    most), with the ensemble's top class for each, and their thumbnails (`thumbnails`)."""
    found = misclassified(student, rows.y, ensemble, meta.classes, MISCLASSIFIED_SHOWN)
    found["shown"] = [
        {MISCLASSIFIED_ROLES.get(k, k): v for k, v in item.items()} for item in found["shown"]
    ]
    if found["shown"]:
        pixels = np.concatenate([rows.data.read(rows.split, item["row"], item["row"] + 1).x
                                 for item in found["shown"]])
        found["thumbnails"] = thumbnail_strip(pixels)
    return found


def thumbnail_strip(pixels: np.ndarray, side: int = THUMBNAIL_SIDE) -> dict[str, Any]:
    """uint8 N × C × H × W images as one PNG (base64) of their thumbnails side by side,
    each at most `side` pixels a side (shrunk, aspect kept, only when larger), with each
    thumbnail's `size` [h, w] and `channels`: what `kdflow.report.plots.thumbnails` reads
    back. One PNG compresses better than N, and keeps the summary plain JSON."""
    import base64
    import io

    from PIL import Image

    channels, height, width = pixels.shape[1:]
    scale = min(1.0, side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    tiles = []
    for image in pixels:
        tile = Image.fromarray(image[0] if channels == 1 else image.transpose(1, 2, 0))
        tiles.append(np.asarray(tile if scale == 1.0 else tile.resize(
            size, Image.Resampling.LANCZOS)))
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(tiles, axis=1)).save(buffer, format="PNG", optimize=True)
    return {
        "png": base64.b64encode(buffer.getvalue()).decode("ascii"),
        "size": [size[1], size[0]],
        "channels": int(channels),
    }


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
    name: str, model: nn.Module, rows: TestRows, n_features: int, batch: int
) -> dict[str, Timed]:
    """What `name` is timed on: random normal rows for a model of numeric columns; for a
    text model its own encoding of real test rows, and (`name from text`) the same rows as
    raw text, tokenizing included."""
    encoder = encoder_of(model)
    if encoder is None:
        one, many = numeric_inputs(n_features, batch)
        return {name: Timed(torch_runner(model), one, many)}
    texts = rows.texts()
    if rows.y.size and texts:
        one, many, one_text, many_text = text_inputs(rows.of(model).x, texts, batch)
    else:  # no test rows: a probe text stands in
        texts = [[PROBE_TEXT] for _ in range(max(1, len(rows.data.meta.text_columns)))]
        one, many, one_text, many_text = text_inputs(encoder.encode(texts), texts, batch)
    return {
        name: Timed(torch_runner(model), one, many),
        name + FROM_TEXT: Timed(text_runner(model, encoder), one_text, many_text),
    }


def _image_runners(
    models: dict[str, nn.Module], rows: TestRows, meta: DatasetMeta, batch: int
) -> dict[str, Timed]:
    """On image data: every model on the same test pixels (uint8, what the models and the
    ONNX export take), and the student and the teachers' ensemble (`name from image`) on
    the same images' files, decoding included. Without test images, zero pixels stand in
    and nothing is timed from files."""
    pixels = rows.of(models["student"]).x
    blobs = rows.images(batch) if len(pixels) else []
    if not blobs:
        zeros = np.zeros((1, *meta.input_shape), np.uint8)
        many = np.repeat(zeros, batch, 0)
        return {name: Timed(torch_runner(m), zeros, many) for name, m in models.items()}
    one, many, one_file, many_files = image_inputs(pixels, blobs, batch)
    runners = {name: Timed(torch_runner(m), one, many) for name, m in models.items()}
    channels, height, width = meta.input_shape
    teachers = [m for name, m in models.items() if name not in ("student", "baseline")]
    for name, nets in (("student", [models["student"]]), (ENSEMBLE, teachers)):
        run = image_runner(nets, (height, width), channels)
        runners[name + FROM_IMAGE] = Timed(run, one_file, many_files)
    return runners


def _all_runners(
    models: dict[str, nn.Module], rows: TestRows, meta: DatasetMeta, batch: int
) -> dict[str, Timed]:
    """Every model's timing runners (`_image_runners` on image data, else `_runners`), at
    batch 1 and `batch` (--latency-batch)."""
    if meta.kind == "image":
        return _image_runners(models, rows, meta, batch)
    runners: dict[str, Timed] = {}
    for name, model in models.items():
        runners |= _runners(name, model, rows, meta.n_features, batch)
    return runners


def _timed_with_onnx(
    models: dict[str, nn.Module],
    student_z: torch.Tensor,
    rows: TestRows,
    meta: DatasetMeta,
    onnx_dir: Path | None,
    batch: int = THROUGHPUT_BATCH,
) -> tuple[dict[str, Timing], dict[str, Any]]:
    """CPU timings of every model and of the student's ONNX export (under `onnx`), and the
    student's `onnx` entry: the export's size, timing and parity with PyTorch on the test
    split's first SAMPLE_ROWS rows, or why it was not exported."""
    runners = _all_runners(models, rows, meta, batch)
    x = rows.of(models["student"]).x
    with tempfile.TemporaryDirectory() as tmp:
        path = (onnx_dir or Path(tmp)) / ONNX_FILE
        try:
            session, parity = export_with_parity(
                models["student"], x, path, x, student_z[: len(x)].numpy(),
                "the student's ONNX export",
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
        "flops": model_flops(
            model, meta.n_features, meta.input_shape if meta.kind == "image" else None
        ),
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


def schema_difference(spec: dict[str, Any], meta: DatasetMeta) -> str | None:
    """Why a saved model cannot be scored on this data (None when it can): other class
    names, or other inputs: text columns (text data), image size or channels (image data:
    a model trained on other pixels would be fed what it never saw), feature columns
    (numeric data). Fails closed: what a spec does not record differs."""
    if list(spec.get("class_names") or []) != list(meta.classes):
        return "it predicts other classes"
    if meta.kind == "text":
        if list(spec.get("text_columns") or []) != list(meta.text_columns):
            return "it reads other text columns"
        return None
    if meta.kind == "image":
        return _image_difference(spec, meta)
    if spec.get("inputs") == "image":
        return "it reads images; this data is numeric columns"
    theirs, ours = list(spec.get("feature_names") or []), list(meta.feature_columns)
    if sorted(theirs) != sorted(ours) or len(set(theirs)) != len(theirs):
        missing = [c for c in theirs if c not in ours]
        extra = [c for c in ours if c not in theirs]
        return ("it reads other feature columns"
                + (f"; this data lacks {', '.join(missing[:5])}" if missing else "")
                + (f"; it never read {', '.join(extra[:5])}" if extra else ""))
    return None  # the same columns, maybe in another order: scored by name (`by_name`)


def by_name(split: Split, spec: dict[str, Any], meta: DatasetMeta) -> Split:
    """`split`'s numeric columns in the order the saved model read them (`feature_names`),
    taken by name: the same columns in another order are not other inputs."""
    theirs = list(spec.get("feature_names") or [])
    ours = list(meta.feature_columns)
    if not theirs or theirs == ours or meta.kind in ("text", "image"):
        return split
    order = [ours.index(name) for name in theirs]
    return Split(x=np.ascontiguousarray(split.x[:, order]), y=split.y)


def _image_difference(spec: dict[str, Any], meta: DatasetMeta) -> str | None:
    channels, height, width = meta.input_shape
    here = f"{channels} × {height} × {width}"
    if spec.get("inputs") != "image":
        return f"it does not read images; this data is {here} images"
    try:
        theirs = [int(spec["channels"]), *(int(v) for v in spec["image_size"])]
    except (KeyError, TypeError, ValueError):
        return "its spec.json records no image size and channels"
    if theirs != [channels, height, width]:
        shown = " × ".join(map(str, theirs))
        return f"it reads {shown} images; this data is {here} (channels × height × width)"
    return None


def same_schema(spec: dict[str, Any], meta: DatasetMeta) -> bool:
    """Whether a saved model reads this data and predicts its classes (`schema_difference`
    says why not): the same class names, and the same text columns (text data), image size
    and channels (image data) or feature columns (numeric data)."""
    return schema_difference(spec, meta) is None


def champion_on_test(
    tracking_uri: str | None,
    model_name: str,
    meta: DatasetMeta,
    test: Split | TestRows | DataSource,
    seen: Any = None,
) -> dict[str, Any] | None:
    """The current champion's metrics on this test split, or None when there is none (or it
    was trained on other features, text columns, image size or classes).

    `test` is the data source (or its `TestRows`), so a text champion reads the rows through
    its own tokenizer; a `Split` serves a champion of numeric columns or images. `seen` is
    the champion's ModelVersion when the caller has read it already; the version is
    downloaded by number, so the numbers belong to exactly that version.
    """
    found = champion_comparison(tracking_uri, model_name, meta, test, seen)[0]
    if found is not None:
        found.pop("predictions", None)
    return found


def champion_comparison(
    tracking_uri: str | None,
    model_name: str,
    meta: DatasetMeta,
    test: Split | TestRows | DataSource,
    seen: Any = None,
) -> tuple[dict[str, Any] | None, str | None]:
    """`champion_on_test`'s metrics with its predicted class per test row (`predictions`,
    for the paired gates), and why the champion was not compared when there is one that
    was not (for the champion gate's detail): None, None without a champion."""
    uri = resolve_tracking_uri(tracking_uri)
    version = seen if seen is not None else champion_version(uri, model_name)
    if version is None:
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        model, spec = load_saved(
            download_model(uri, f"models:/{model_name}/{version.version}", Path(tmp))
        )
        difference = schema_difference(spec, meta)
        if difference is None and isinstance(test, Split) and encoder_of(model) is not None:
            difference = "it reads text: give the data source to compare it"
        if difference is not None:
            reason = f"champion v{version.version} not compared: {difference}"
            log.warning("%s", reason)
            return None, reason
        if isinstance(test, Split):
            labels = test.y
            probs = torch.softmax(logits_on(model, by_name(test, spec, meta)), -1)
        else:
            rows = test if isinstance(test, TestRows) else TestRows(test)
            labels = rows.y
            probs = torch.softmax(rows.logits(model, spec), -1)
    quality = quality_metrics(probs, labels, meta.classes)
    return {
        "version": int(version.version),
        "accuracy": quality["accuracy"],
        "macro_f1": quality["macro_f1"],
        "ece": quality["ece"],
        "per_class_accuracy": quality["per_class_accuracy"],
        "dataset_sha256": (version.tags or {}).get(DATASET_TAG),
        "predictions": probs.argmax(-1).numpy(),
    }, None
