"""Inference over arrays of rows: logits in batches, and accuracy on a split."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kdflow.data.prepared import Split


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    outs = [
        model(torch.from_numpy(x[i : i + batch_size]).to(device)).float().cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(model: nn.Module, split: Split) -> float:
    if len(split.y) == 0:
        return float("nan")
    preds = predict_logits(model, split.x).argmax(-1).numpy()
    return float((preds == split.y).mean())
