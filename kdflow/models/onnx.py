"""The student as ONNX: export with torch.onnx (the torch.export-based exporter), run with
ONNX Runtime, and prove both give the same predictions.

The exported graph takes `features` (float32, batch × n_features, the batch axis dynamic)
and returns `logits` (batch × n_classes); the feature normalisation and the reshape to the
sample's input shape are inside the graph, as they are inside `kdflow.models.zoo.Classifier`.
An ONNX file is a protobuf: like safetensors, loading it executes no code.
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


def export_onnx(model: nn.Module, n_features: int, path: Path) -> Path:
    """Export `model` (a kdflow Classifier) to an ONNX file with a dynamic batch axis.

    Uses the torch.export-based exporter (`dynamo=True`, the default since torch 2.9); the
    TorchScript exporter is deprecated. Takes a few seconds, most of it one-off imports.
    """
    model = model.cpu().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, n_features)
    batch = torch.export.Dim("batch", min=1)
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
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"x": {0: batch}},
                opset_version=OPSET,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean "cannot export"
        raise ModelFormatError(f"cannot export the model to ONNX: {exc}") from exc
    finally:
        for name, logger in quiet.items():
            logger.setLevel(levels[name])
    if program is None:
        raise ModelFormatError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)
    log.info("exported ONNX model to %s (%d bytes)", path, path.stat().st_size)
    return path


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


def run_onnx(session: Any, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Logits for every row of `x`, in batches."""
    outs = [
        session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x[i : i + batch_size])})[0]
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
    n_features: int,
    path: Path,
    x: np.ndarray,
    expected: np.ndarray | None = None,
    what: str = "the ONNX export",
) -> tuple[Any, Parity]:
    """Export `model` to `path` and require ONNX Runtime to predict what PyTorch predicts on
    the rows `x` (`expected`: PyTorch's logits for them, computed here when not given).

    Returns the ONNX Runtime session (one thread) and the parity; ModelFormatError when
    they disagree.
    """
    export_onnx(model, n_features, path)
    session = onnx_session(path)
    if expected is None:
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
    parity = check_parity(expected, run_onnx(session, x))
    require_parity(parity, what)
    return session, parity


def export_checked(model_dir: Path, folder: Path) -> Path:
    """Export a saved model to `folder/model.onnx`, checked on 256 rows drawn around its
    training mean (its normalisation buffers); returns the file's path."""
    from kdflow.models.artifacts import load_model

    model, spec = load_model(model_dir)
    n_features = int(spec["n_features"])
    state = model.state_dict()
    rng = np.random.default_rng(0)
    x = (
        rng.standard_normal((256, n_features)) * state["std"].numpy() + state["mean"].numpy()
    ).astype(np.float32)
    path = folder / ONNX_FILE
    export_with_parity(model, n_features, path, x)
    return path
