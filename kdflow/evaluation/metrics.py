"""Metrics on the test split, CPU speed, and the gates that decide registration.

Quality: accuracy, macro-F1, expected calibration error, negative log-likelihood, top-1
agreement with the teacher ensemble, per-class accuracy and the confusion matrix. Cost:
parameters, file size, FLOPs, and CPU latency/throughput measured on one thread, models timed
round-robin so machine noise lands on all of them alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from kdflow.config import GateConfig
from kdflow.data.prepared import Split
from kdflow.distill.training import predict_logits
from kdflow.report.pages import fmt_or_dash as _num

# Accuracies are ratios of counts: 0.95 - 0.94 is 0.010000000000000009 in floating point.
# Gates compare with this slack so a value shown as equal to its threshold is treated so.
EPS = 1e-9
ECE_BINS = 15  # Guo et al. 2017 use 15 equal-width confidence bins
THROUGHPUT_BATCH = 256

Runner = Callable[[np.ndarray], object]


@dataclass
class Gate:
    name: str
    passed: bool
    value: float | None
    threshold: float
    op: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Timing:
    """CPU speed of one model on one thread."""

    latency_ms: float
    """Median time of a batch-1 prediction."""
    latency_p95_ms: float
    """95th percentile of the same batch-1 timings."""
    throughput_per_s: float | None
    """Rows per second at batch THROUGHPUT_BATCH (median batch time); None when not measured."""


# ------------------------------------------------------------------------------- quality


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


# ---------------------------------------------------------------------------------- cost


def flops_per_sample(model: nn.Module, n_features: int) -> int:
    """FLOPs of one batch-1 forward pass (`kdflow.models.zoo.flops` gives the convention)."""
    from kdflow.models.zoo import flops

    return flops(model.cpu(), [n_features])


def torch_runner(model: nn.Module) -> Runner:
    """A timing runner for a PyTorch model (call it under torch.inference_mode)."""
    model = model.cpu().eval()
    return lambda x: model(torch.from_numpy(x))


def cpu_timings(
    runners: dict[str, Runner],
    n_features: int,
    repeats: int = 300,
    warmup: int = 30,
    batch_repeats: int = 20,
    batch_size: int = THROUGHPUT_BATCH,
) -> dict[str, Timing]:
    """Batch-1 latency (p50, p95) and batch-`batch_size` throughput, on one CPU thread.

    The runners are timed round-robin in the same loop, so noise from a busy machine lands
    on all of them alike and their ratios stay meaningful. ONNX Runtime sessions must be
    made with one intra-op thread (`kdflow.models.onnx.onnx_session` does) to compare fairly.
    `batch_repeats=0` skips the throughput measurement.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, n_features), dtype=np.float32)
    many = rng.standard_normal((batch_size, n_features), dtype=np.float32)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                for run in runners.values():
                    run(one)
            single = _round_robin(runners, one, repeats)
            for run in runners.values():
                if batch_repeats:
                    run(many)
            batched = _round_robin(runners, many, batch_repeats) if batch_repeats else {}
    finally:
        torch.set_num_threads(threads)
    return {
        name: Timing(
            latency_ms=float(np.median(times) * 1e3),
            latency_p95_ms=float(np.percentile(times, 95) * 1e3),
            throughput_per_s=(
                float(batch_size / np.median(batched[name])) if name in batched else None
            ),
        )
        for name, times in single.items()
    }


def _round_robin(runners: dict[str, Runner], x: np.ndarray, repeats: int) -> dict[str, list]:
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - start)
    return times


def cpu_latency_ms(
    models: dict[str, nn.Module], n_features: int, repeats: int = 300, warmup: int = 30
) -> dict[str, float]:
    """p50 latency of one-sample inference on one CPU thread, in milliseconds."""
    timings = cpu_timings(
        {name: torch_runner(m) for name, m in models.items()},
        n_features,
        repeats=repeats,
        warmup=warmup,
        batch_repeats=0,
    )
    return {name: t.latency_ms for name, t in timings.items()}


def logits_on(model: nn.Module, split: Split) -> torch.Tensor:
    return predict_logits(model, split.x)


# --------------------------------------------------------------------------------- gates


def decide_gates(
    cfg: GateConfig,
    *,
    student: dict[str, Any],
    baseline: dict[str, Any],
    ensemble_acc: float,
    teachers: list[dict[str, Any]],
    champion: dict[str, Any] | None,
) -> list[Gate]:
    """Every gate, each checked against its threshold; registration needs all to pass.

    `student` needs `accuracy`, `params`, `latency_ms` and `ece`.
    """
    retention = student["accuracy"] / ensemble_acc if ensemble_acc > 0 else 0.0
    gain = student["accuracy"] - baseline["accuracy"]
    compression = min(t["params"] for t in teachers) / max(student["params"], 1)
    fastest = min(t["latency_ms"] for t in teachers)
    speedup = fastest / student["latency_ms"] if student["latency_ms"] > 0 else 0.0
    gates = [
        Gate(
            "retention",
            retention >= cfg.min_retention - EPS,
            round(retention, 4),
            cfg.min_retention,
            ">=",
            f"student {student['accuracy']:.4f} / ensemble {ensemble_acc:.4f}",
        ),
        Gate(
            "beats_baseline",
            gain > cfg.min_gain_over_baseline + EPS,
            round(gain, 4),
            cfg.min_gain_over_baseline,
            ">",
            f"student {student['accuracy']:.4f} - baseline {baseline['accuracy']:.4f}",
        ),
        Gate(
            "compression",
            compression >= cfg.min_compression - EPS,
            round(compression, 2),
            cfg.min_compression,
            ">=",
            f"smallest teacher params / student params {student['params']}",
        ),
        Gate(
            "speedup",
            speedup >= cfg.min_speedup - EPS,
            round(speedup, 2),
            cfg.min_speedup,
            ">=",
            f"fastest teacher {fastest:.3f} ms / student {student['latency_ms']:.3f} ms",
        ),
        Gate(
            "calibration",
            student["ece"] <= cfg.max_ece + EPS,
            round(student["ece"], 4),
            cfg.max_ece,
            "<=",
            f"expected calibration error of the student ({ECE_BINS} bins)",
        ),
    ]
    if champion is None:
        gates.append(
            Gate(
                "no_regression_vs_champion", True, None, cfg.max_regression, "<=", "no champion yet"
            )
        )
    else:
        drop = champion["accuracy"] - student["accuracy"]
        gates.append(
            Gate(
                "no_regression_vs_champion",
                drop <= cfg.max_regression + EPS,
                round(drop, 4),
                cfg.max_regression,
                "<=",
                f"champion v{champion['version']} {champion['accuracy']:.4f} - student "
                f"{student['accuracy']:.4f}",
            )
        )
    return gates


# -------------------------------------------------------------------------------- report


def _model_row(label: str, m: dict[str, Any]) -> str:
    size = m.get("file_bytes")
    return (
        f"| {label} | {m['accuracy']:.4f} | {_num(m.get('params'), ',')} | "
        f"{_num(m.get('latency_ms'), '.3f')} | {_num(m.get('latency_p95_ms'), '.3f')} | "
        f"{_num(m.get('throughput_per_s'), ',.0f')} | "
        f"{_num(m.get('macro_f1'), '.4f')} | {_num(m.get('ece'), '.4f')} | "
        f"{_num(m.get('nll'), '.4f')} | {_num(m.get('agreement'), '.4f')} | "
        f"{'–' if size is None else f'{size / 1024:,.1f}'} | {_num(m.get('flops'), ',')} |"
    )


def _runtime_row(label: str, m: dict[str, Any]) -> str:
    size = m.get("file_bytes")
    return (
        f"| {label} | {_num(m.get('latency_ms'), '.3f')} | "
        f"{_num(m.get('latency_p95_ms'), '.3f')} | {_num(m.get('throughput_per_s'), ',.0f')} | "
        f"{'–' if size is None else f'{size / 1024:,.1f}'} |"
    )


def report_markdown(summary: dict[str, Any]) -> str:
    """The evaluation as Markdown, for the KFP UI and the run folder."""
    lines = [
        "# kdflow evaluation",
        "",
        "Test split; latency and throughput on one CPU thread (batch 1 and batch "
        f"{THROUGHPUT_BATCH}); agreement is top-1 agreement with the teacher ensemble.",
        "",
        "| model | accuracy | params | latency (ms) | p95 (ms) | throughput (rows/s) | "
        "macro-F1 | ECE | NLL | agreement | size (KiB) | FLOPs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in summary["teachers"]:
        lines.append(_model_row(f"teacher `{t['spec']}`", t))
    lines.append(_model_row("ensemble", summary["ensemble"]))
    for name in ("baseline", "student"):
        lines.append(_model_row(f"{name} `{summary[name]['spec']}`", summary[name]))
    student = summary["student"]
    onnx = student.get("onnx")
    if onnx:
        speed = student["latency_ms"] / onnx["latency_ms"] if onnx["latency_ms"] else None
        lines += [
            "",
            "## The student in ONNX Runtime",
            "",
            "| runtime | latency (ms) | p95 (ms) | throughput (rows/s) | size (KiB) |",
            "| --- | --- | --- | --- | --- |",
            _runtime_row("PyTorch", student),
            _runtime_row("ONNX Runtime", onnx),
            "",
            f"ONNX Runtime is {_num(speed, '.2f')}× PyTorch's batch-1 speed. Same predictions "
            f"on all {onnx['parity']['rows']} test rows: "
            f"{'yes' if onnx['parity']['predictions_match'] else 'NO'}; max |logit difference| "
            f"{onnx['parity']['max_abs_diff']:.2e}.",
        ]
    champion = summary.get("champion")
    lines += [
        "",
        "## Champion",
        "",
        f"Current `champion`: version {champion['version']}, accuracy "
        f"{champion['accuracy']:.4f} on this test split."
        if champion
        else "No `champion` yet.",
    ]
    if student.get("per_class_accuracy"):
        classes = list(student["per_class_accuracy"])
        lines += [
            "",
            "## Student per class",
            "",
            "| class | accuracy | " + " | ".join(f"→{c}" for c in classes) + " |",
            "| --- | --- | " + " | ".join("---" for _ in classes) + " |",
        ]
        matrix = student.get("confusion_matrix") or [[] for _ in classes]
        for name, row in zip(classes, matrix, strict=True):
            cells = " | ".join(str(v) for v in row)
            lines.append(f"| {name} | {student['per_class_accuracy'][name]:.4f} | {cells} |")
    lines += [
        "",
        "## Gates",
        "",
        "| gate | result | value | threshold | detail |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, g in summary["gates"].items():
        lines.append(
            f"| {name} | {'PASS' if g['passed'] else 'FAIL'} | {g['value']} | "
            f"{g['op']} {g['threshold']} | {g['detail']} |"
        )
    verdict = "all gates passed" if summary["passed"] else "a gate failed: not registered"
    lines += ["", f"**{verdict}**", ""]
    return "\n".join(lines)
