"""Metrics on the test split, CPU latency, and the gates that decide registration."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from kdflow.config import GateConfig
from kdflow.data import Split
from kdflow.training import predict_logits

# Accuracies are ratios of counts: 0.95 - 0.94 is 0.010000000000000009 in floating point.
# Gates compare with this slack so a value shown as equal to its threshold is treated so.
EPS = 1e-9


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


def accuracy_of_logits(logits: torch.Tensor, y: np.ndarray) -> float:
    return float((logits.argmax(-1).numpy() == y).mean())


def ensemble_accuracy(teacher_logits: list[torch.Tensor], y: np.ndarray) -> float:
    """Accuracy of the mean of the teachers' probabilities (the distillation target at T=1)."""
    probs = torch.stack([torch.softmax(z, -1) for z in teacher_logits]).mean(0)
    return accuracy_of_logits(probs, y)


@torch.inference_mode()
def cpu_latency_ms(
    models: dict[str, nn.Module], n_features: int, repeats: int = 300, warmup: int = 30
) -> dict[str, float]:
    """p50 latency of one-sample inference on one CPU thread, in milliseconds.

    The models are timed round-robin in the same loop, so machine noise lands on all of
    them alike and their ratios stay meaningful on a busy machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.randn(1, n_features)
        cpu = {name: m.cpu().eval() for name, m in models.items()}
        for _ in range(warmup):
            for m in cpu.values():
                m(x)
        times: dict[str, list[float]] = {name: [] for name in cpu}
        for _ in range(repeats):
            for name, m in cpu.items():
                start = time.perf_counter()
                m(x)
                times[name].append(time.perf_counter() - start)
        return {name: float(np.median(t) * 1e3) for name, t in times.items()}
    finally:
        torch.set_num_threads(threads)


def logits_on(model: nn.Module, split: Split) -> torch.Tensor:
    return predict_logits(model, split.x)


def decide_gates(
    cfg: GateConfig,
    *,
    student: dict[str, float],
    baseline: dict[str, float],
    ensemble_acc: float,
    teachers: list[dict[str, Any]],
    champion: dict[str, Any] | None,
) -> list[Gate]:
    """Every gate, each checked against its threshold; registration needs all to pass."""
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


def report_markdown(summary: dict[str, Any]) -> str:
    """The evaluation as Markdown, for the KFP UI and the run folder."""
    lines = [
        "# kdflow evaluation",
        "",
        "| model | accuracy | params | latency (ms) |",
        "| --- | --- | --- | --- |",
    ]
    for t in summary["teachers"]:
        lines.append(
            f"| teacher `{t['spec']}` | {t['accuracy']:.4f} | {t['params']:,} | "
            f"{t['latency_ms']:.3f} |"
        )
    lines.append(f"| ensemble | {summary['ensemble']['accuracy']:.4f} | | |")
    for name in ("baseline", "student"):
        m = summary[name]
        lines.append(
            f"| {name} `{m['spec']}` | {m['accuracy']:.4f} | {m['params']:,} | "
            f"{m['latency_ms']:.3f} |"
        )
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
