"""The student as ONNX: export with torch.onnx (the torch.export-based exporter), run with
ONNX Runtime, and prove both give the same predictions.

The exported graph takes one input, `features`, whatever the model, with the batch axis
dynamic: float32 batch × n_features for a model of numeric columns (the zoo's, `python:`
models), the packed int64 batch × K × L of token ids, attention mask (and token types)
for a text model (`kdflow.models.hf.HfClassifier`; tokenizing stays outside the graph), or
uint8 batch × C × H × W pixels (0-255) for an image model (decoding and resizing stay
outside, in `kdflow.data.images.decode_image`). It returns `logits` (batch × n_classes).
A model's normalisation (an image model's cast and scaling of its pixels too) and the
reshape to the sample's input shape are inside the graph, as they are inside
`kdflow.models.zoo.Classifier`. A text model's graph runs every row at its full length
(HfClassifier trims padding only outside an export); the attention mask keeps the logits
the same. An ONNX file is a protobuf: like safetensors, loading it executes no code.

Some models do not export (torch.onnx refuses some transformers architectures' code):
`NotExportable` says so, and the evaluate step records it rather than failing.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdflow.errors import ModelFormatError

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INPUT_NAME = "features"
OUTPUT_NAME = "logits"
OPSET = 18
# float32 through a different kernel library: logits agree to ~1e-6 on the zoo's models.
# The tolerance is loose enough for deep CNNs and tight enough to catch a wrong graph.
ATOL, RTOL = 1e-4, 1e-3
NOISY_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


EXAMPLE_ROWS = 2
"""Rows of the export's example: at least 2, so torch.export keeps the batch axis dynamic
(a size-1 axis is specialised)."""


class NotExportable(ModelFormatError):
    """The model cannot be exported to ONNX, or ONNX Runtime cannot load its export (as
    opposed to an export that loads but predicts otherwise: see `require_parity`)."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line: `TypeError: first line of the message`."""
    text = (str(exc).strip().splitlines() or [""])[0].strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def example_batch(x: np.ndarray | int, rows: int = EXAMPLE_ROWS) -> np.ndarray:
    """The export's example batch: the first `rows` rows of `x` (the model's inputs: float32
    N × F, int64 N × K × L for text, uint8 N × C × H × W pixels, kept as they are so the
    graph's input has the model's dtype), repeated when `x` has fewer; an int `n` is the
    old convention, zeros float32 rows × n."""
    if isinstance(x, int | np.integer):
        return np.zeros((rows, int(x)), np.float32)
    x = np.asarray(x)
    if x.dtype.kind == "f":
        x = x.astype(np.float32, copy=False)
    if len(x) == 0:
        return np.zeros((rows, *x.shape[1:]), x.dtype)
    return np.ascontiguousarray(np.resize(x[:rows], (rows, *x.shape[1:])))


@dataclass
class Parity:
    """How the ONNX model's outputs compare with PyTorch's on the same rows."""

    rows: int
    predictions_match: bool
    mismatched_rows: int
    max_abs_diff: float
    logits_close: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_onnx(model: nn.Module, example: np.ndarray | int, path: Path) -> Path:
    """Export `model` (any kdflow model) to an ONNX file with a dynamic batch axis.

    `example` is a batch of the model's inputs (the first rows of its test inputs: float32
    N × F, int64 N × K × L for a text model, uint8 N × C × H × W for an image model), of
    which the first EXAMPLE_ROWS are traced; an int is a number of features (zeros). Uses
    the torch.export-based exporter (`dynamo=True`, the default since torch 2.9); the
    TorchScript exporter is deprecated.
    Takes a few seconds, most of it one-off imports. NotExportable when the exporter
    refuses the model.
    """
    model = model.cpu().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor = torch.from_numpy(example_batch(example))
    batch = torch.export.Dim("batch", min=1)
    argument = _forward_argument(model)
    # The exporter logs every optimisation pass at INFO, and "torchvision is not installed"
    # as a warning: quiet them for the export only.
    quiet = {name: logging.getLogger(name) for name in NOISY_LOGGERS}
    levels = {name: logger.level for name, logger in quiet.items()}
    for logger in quiet.values():
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (tensor,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={argument: {0: batch}},
                opset_version=OPSET,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean "cannot export"
        raise NotExportable(f"cannot export the model to ONNX: {one_line(exc)}") from exc
    finally:
        for name, logger in quiet.items():
            logger.setLevel(levels[name])
    if program is None:
        raise NotExportable("torch.onnx.export returned no program")
    try:
        program.save(str(path), external_data=False)
    except Exception as exc:  # e.g. a graph over protobuf's 2 GiB limit
        raise NotExportable(f"cannot save the ONNX export: {one_line(exc)}") from exc
    log.info("exported ONNX model to %s (%d bytes)", path, path.stat().st_size)
    return path


def _forward_argument(model: nn.Module) -> str:
    """The name of the forward's input (`x` in kdflow's models), for `dynamic_shapes`."""
    import inspect

    try:
        names = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return "x"
    return names[0] if names else "x"


def onnx_session(path: Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session; one thread by default, to time it like PyTorch is timed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime's own exception types are not importable
        raise ModelFormatError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc


def input_name(session: Any) -> str:
    """The name of the session's one input (INPUT_NAME for kdflow's exports)."""
    inputs = session.get_inputs()
    return str(inputs[0].name) if inputs else INPUT_NAME


ONNX_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(uint8)": np.uint8}
"""The numpy dtype of each input type kdflow's exports take."""


def input_dtype(session: Any, x: np.ndarray) -> np.dtype:
    """The dtype the session's input takes (float32, int64 token ids, uint8 pixels); for an
    input type kdflow does not export, the PyTorch models' (`inference.model_dtype`)."""
    from kdflow.models.inference import model_dtype

    inputs = session.get_inputs()
    declared = ONNX_TYPES.get(str(inputs[0].type)) if inputs else None
    return np.dtype(declared) if declared is not None else model_dtype(x)


def run_onnx(session: Any, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Logits for every row of `x` (float32 columns, int64 packed text or uint8 pixels), in
    batches, cast to what the graph's input declares: an image model's graph takes uint8
    pixels, and an int64 cast of them would be refused."""
    name = input_name(session)
    x = x.astype(input_dtype(session, x), copy=False)
    outs = [
        session.run([OUTPUT_NAME], {name: np.ascontiguousarray(x[i : i + batch_size])})[0]
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outs) if outs else np.empty((0, 0), np.float32)


def check_parity(torch_logits: np.ndarray, onnx_logits: np.ndarray) -> Parity:
    """Same argmax on every row, and logits within ATOL + RTOL·|logit|."""
    if torch_logits.shape != onnx_logits.shape:
        raise ModelFormatError(
            f"ONNX model returns shape {onnx_logits.shape}, PyTorch {torch_logits.shape}"
        )
    mismatched = int((torch_logits.argmax(1) != onnx_logits.argmax(1)).sum())
    diff = np.abs(torch_logits - onnx_logits)
    return Parity(
        rows=len(torch_logits),
        predictions_match=mismatched == 0,
        mismatched_rows=mismatched,
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        logits_close=bool(np.allclose(onnx_logits, torch_logits, atol=ATOL, rtol=RTOL)),
    )


def require_parity(parity: Parity, what: str = "the ONNX export") -> None:
    """Raise ModelFormatError when the ONNX model does not predict what PyTorch predicts."""
    if not (parity.predictions_match and parity.logits_close):
        raise ModelFormatError(
            f"{what} disagrees with the PyTorch model: {parity.mismatched_rows} of "
            f"{parity.rows} predictions differ, max |logit difference| "
            f"{parity.max_abs_diff:.2e} (tolerance {ATOL} + {RTOL}·|logit|); "
            "report this with the model's spec.json"
        )


def export_with_parity(
    model: nn.Module,
    example: np.ndarray | int,
    path: Path,
    x: np.ndarray,
    expected: np.ndarray | None = None,
    what: str = "the ONNX export",
) -> tuple[Any, Parity]:
    """Export `model` to `path` (`example`: see `export_onnx`; the first rows of `x` do)
    and require ONNX Runtime to predict what PyTorch predicts on the rows `x` (`expected`:
    PyTorch's logits for them, computed here when not given).

    Returns the ONNX Runtime session (one thread) and the parity; NotExportable when the
    model does not export or its export does not load, ModelFormatError when they disagree.
    """
    export_onnx(model, example, path)
    try:
        session = onnx_session(path)
    except ModelFormatError as exc:
        raise NotExportable(str(exc)) from exc
    if expected is None:
        from kdflow.models.inference import predict_logits

        expected = predict_logits(model, x).numpy()
    parity = check_parity(expected, run_onnx(session, x))
    require_parity(parity, what)
    return session, parity


PROBE_TEXTS = (
    "kdflow probe text",
    "a",
    "A somewhat longer sentence, with punctuation; numbers 12 345 and UPPER case words.",
    "the quick brown fox jumps over the lazy dog " * 8,
    "",
    "naïve café – ünïcödé text",
)
"""Texts of many lengths (empty, one token, truncated) for a text model's export check."""


def check_inputs(model: nn.Module, spec: dict[str, Any], rows: int = 256) -> np.ndarray:
    """Rows to check a saved model's export on without its data: for a text model the
    tokenizer's encoding of texts of many lengths (`HfClassifier.example_input` among
    them); for an image model (spec `inputs: image`) uniform uint8 pixels at its
    `channels` × `image_size`, so the graph takes what serving decodes; otherwise `rows`
    rows drawn around its training mean (its normalisation buffers), or standard normal
    rows for a model without them."""
    from kdflow.models.sources import encoder_of

    if spec.get("inputs") == "image":
        return image_check_inputs(spec, min(rows, IMAGE_CHECK_ROWS))
    encoder = encoder_of(model)
    if encoder is not None:
        columns = max(1, len(spec.get("text_columns") or []))
        texts = [list(PROBE_TEXTS)] + [list(reversed(PROBE_TEXTS))] * (columns - 1)
        encoded = encoder.encode(texts)
        probe = getattr(model, "example_input", None)
        if callable(probe):
            encoded = np.concatenate([probe(EXAMPLE_ROWS).cpu().numpy(), encoded])
        return encoded.astype(np.int64)
    n_features = int(spec["n_features"])
    state = model.state_dict()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, n_features))
    if "mean" in state and "std" in state:
        x = x * state["std"].cpu().numpy() + state["mean"].cpu().numpy()
    return x.astype(np.float32)


IMAGE_CHECK_ROWS = 32
"""Images of an image model's export check: each costs a forward pass of a possibly large
network (a 224 × 224 ViT), and 32 random images already cover every pixel value."""


def image_check_inputs(spec: dict[str, Any], rows: int = IMAGE_CHECK_ROWS) -> np.ndarray:
    """`rows` uniform uint8 pixel images, C × H × W of an image model's spec.json (random
    pixels exercise every value a decoded image can have, 0 and 255 included)."""
    height, width = (int(v) for v in spec["image_size"])
    shape = (rows, int(spec["channels"]), height, width)
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def export_checked(model_dir: Path, folder: Path) -> Path | None:
    """Export a saved model (any source: `kdflow.models.sources.load_saved`) to
    `folder/model.onnx`, checked on `check_inputs`; returns the file's path, or None when
    the model does not export (NotExportable, logged). ModelFormatError when the export
    predicts otherwise than PyTorch."""
    from kdflow.models.sources import load_saved

    model, spec = load_saved(model_dir)
    x = check_inputs(model, spec)
    path = folder / ONNX_FILE
    try:
        export_with_parity(model, x, path, x)
    except NotExportable as exc:
        log.warning("%s: no ONNX export (%s)", model_dir, exc)
        return None
    return path
