"""Inference over arrays of rows: logits in batches, and accuracy on a split.

The rows are whatever the model takes (`kdflow.data.sources`): float32 N × F numeric
columns, or the packed int64 N × K × L token ids and masks of a text model, which stay
integers (a text model's embedding lookup needs them so; it trims padding itself).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kdflow.data.prepared import Split


def model_dtype(x: np.ndarray) -> np.dtype:
    """The dtype a model takes rows of `x` in: floats as float32, image pixels as uint8 (the
    model scales them), other integers as int64 (token ids), anything else as it is."""
    if x.dtype.kind == "f":
        return np.dtype(np.float32)
    if x.dtype != np.uint8 and x.dtype.kind in "iub":
        return np.dtype(np.int64)
    return x.dtype


def as_tensor(x: np.ndarray) -> torch.Tensor:
    """Rows as the tensor a model takes (`model_dtype`), always a writable, contiguous
    copy-or-view that torch.from_numpy accepts."""
    x = x.astype(model_dtype(x), copy=False)
    if not x.flags.writeable or not x.flags.c_contiguous:
        x = np.array(x, order="C")  # from_numpy warns on read-only arrays
    return torch.from_numpy(x)


def _device(model: nn.Module) -> torch.device:
    found = next(model.parameters(), None)
    return found.device if found is not None else torch.device("cpu")


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 1024) -> torch.Tensor:
    """The model's float32 logits for every row of `x`, `batch_size` rows at a time."""
    model.eval()
    device = _device(model)
    outs = [
        model(as_tensor(x[i : i + batch_size]).to(device)).float().cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(model: nn.Module, split: Split) -> float:
    if len(split.y) == 0:
        return float("nan")
    preds = predict_logits(model, split.x).argmax(-1).numpy()
    return float((preds == split.y).mean())
