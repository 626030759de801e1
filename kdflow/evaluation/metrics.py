"""Quality of one model's predictions on the test split.

Accuracy, macro-F1, expected calibration error and its reliability bins, negative
log-likelihood, top-1 agreement with the teacher ensemble, per-class accuracy and the
confusion matrix. What a model costs to run is in `kdflow.evaluation.timing`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from kdflow.data.prepared import Split
from kdflow.models.inference import predict_logits

ECE_BINS = 15  # Guo et al. 2017 use 15 equal-width confidence bins


def accuracy_of_logits(logits: torch.Tensor, y: np.ndarray) -> float:
    return float((logits.argmax(-1).numpy() == y).mean())


def ensemble_probabilities(teacher_logits: list[torch.Tensor]) -> torch.Tensor:
    """Mean of the teachers' probabilities: the distillation target at T=1."""
    return torch.stack([torch.softmax(z, -1) for z in teacher_logits]).mean(0)


def ensemble_accuracy(teacher_logits: list[torch.Tensor], y: np.ndarray) -> float:
    """Accuracy of the mean of the teachers' probabilities (the distillation target at T=1)."""
    return accuracy_of_logits(ensemble_probabilities(teacher_logits), y)


def confusion_matrix(pred: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts with the true class as the row and the predicted class as the column."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (y, pred), 1)
    return matrix


def macro_f1(matrix: np.ndarray) -> float:
    """Unweighted mean over classes of F1 = 2·TP / (2·TP + FP + FN); a class that is never
    present nor predicted scores 0, as in scikit-learn's `zero_division=0`."""
    tp = np.diag(matrix).astype(np.float64)
    denominator = matrix.sum(0) + matrix.sum(1)  # (TP + FP) + (TP + FN)
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float(f1.mean())


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE = Σ_b |B_b|/n · |accuracy(B_b) − confidence(B_b)| over equal-width bins of the top
    probability (Guo et al. 2017, "On Calibration of Modern Neural Networks")."""
    ece = 0.0
    for b in reliability_bins(probs, y, bins):
        if b["count"]:
            ece += b["count"] / len(y) * abs(b["accuracy"] - b["confidence"])
    return float(ece)


def reliability_bins(
    probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS
) -> list[dict[str, float]]:
    """The reliability diagram behind the ECE: for each of the same equal-width bins of the
    top probability, its edges, row count, accuracy and mean confidence (empty bins: None)."""
    confidence = probs.max(1)
    correct = probs.argmax(1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin b holds confidences in (edges[b], edges[b+1]]; a confidence of 0 cannot occur.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    out: list[dict[str, Any]] = []
    for b in range(bins):
        mask = which == b
        out.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": int(mask.sum()),
                "accuracy": float(correct[mask].mean()) if mask.any() else None,
                "confidence": float(confidence[mask].mean()) if mask.any() else None,
            }
        )
    return out


def negative_log_likelihood(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean −log p(true class), in nats; probabilities are clamped at 1e-12."""
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())


def quality_metrics(
    probs: torch.Tensor | np.ndarray,
    y: np.ndarray,
    class_names: list[str],
    reference_pred: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every quality metric of one model's test-split probabilities.

    `reference_pred` (the ensemble's top-1 predictions) adds `agreement`, the share of rows
    where this model's top-1 prediction is the same.
    """
    p = probs.numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    p = p.astype(np.float64)
    pred = p.argmax(1)
    matrix = confusion_matrix(pred, y, len(class_names))
    support = matrix.sum(1)
    per_class = np.divide(
        np.diag(matrix), support, out=np.zeros(len(class_names)), where=support > 0
    )
    metrics: dict[str, Any] = {
        "accuracy": float((pred == y).mean()),
        "macro_f1": macro_f1(matrix),
        "ece": expected_calibration_error(p, y),
        "nll": negative_log_likelihood(p, y),
        "per_class_accuracy": {
            name: float(acc) for name, acc in zip(class_names, per_class, strict=True)
        },
        "confusion_matrix": matrix.tolist(),
        "reliability": reliability_bins(p, y),
    }
    if reference_pred is not None:
        metrics["agreement"] = float((pred == reference_pred).mean())
    return metrics


def logits_on(model: nn.Module, split: Split) -> torch.Tensor:
    """The model's logits for every row of the split."""
    return predict_logits(model, split.x)


def misclassified(
    probs: torch.Tensor | np.ndarray,
    y: np.ndarray,
    reference: torch.Tensor | np.ndarray,
    class_names: list[str],
    limit: int = 16,
) -> dict[str, Any]:
    """The rows a model gets wrong, for a person to look at: how many (`count` of `rows`)
    and up to `limit` of them in `shown`, the most confident mistakes first (the ones that
    say most about what the model learnt wrong; ties in row order), each with its `row`,
    the `true` class, the model's top class (`predicted`, `probability`) and the
    reference's (the teachers' ensemble: `reference`, `reference_probability`), so a
    mistake the teachers make too shows as such."""
    p = np.asarray(probs.numpy() if isinstance(probs, torch.Tensor) else probs, np.float64)
    r = np.asarray(
        reference.numpy() if isinstance(reference, torch.Tensor) else reference, np.float64
    )
    pred, ref = p.argmax(1), r.argmax(1)
    wrong = np.flatnonzero(pred != y)
    order = wrong[np.argsort(-p[wrong, pred[wrong]], kind="stable")][:limit]
    shown = [
        {
            "row": int(i),
            "true": class_names[int(y[i])],
            "predicted": class_names[int(pred[i])],
            "probability": float(p[i, pred[i]]),
            "reference": class_names[int(ref[i])],
            "reference_probability": float(r[i, ref[i]]),
        }
        for i in order
    ]
    return {"count": int(len(wrong)), "rows": int(len(y)), "shown": shown}
