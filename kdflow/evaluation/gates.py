"""The gates that decide registration: each compares one number of the student with its
threshold (`kdflow.config.GateConfig`), and registration needs every one to pass."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kdflow.config import GateConfig
from kdflow.evaluation.metrics import ECE_BINS

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


def common_gates(
    cfg: GateConfig, student: dict[str, Any], teachers: list[dict[str, Any]]
) -> list[Gate]:
    """The gates every task shares: compression (parameters) and speedup (`latency_ms`:
    batch-1 latency of a classifier, time per generated token of a causal LM)."""
    compression = min(t["params"] for t in teachers) / max(student["params"], 1)
    fastest = min(t["latency_ms"] for t in teachers)
    speedup = fastest / student["latency_ms"] if student["latency_ms"] > 0 else 0.0
    return [
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


def decide_gates(
    cfg: GateConfig,
    *,
    student: dict[str, Any],
    baseline: dict[str, Any],
    ensemble_acc: float,
    teachers: list[dict[str, Any]],
    champion: dict[str, Any] | None,
    champion_unscored: str | None = None,
) -> list[Gate]:
    """Every gate, each checked against its threshold; registration needs all to pass.

    `student` needs `accuracy`, `params`, `latency_ms` and `ece`. `champion_unscored` says
    why a champion that exists could not be scored on this test split (other inputs or
    classes): the champion gate then fails closed, rather than passing as if there were no
    champion and letting the new model replace it unseen.
    """
    retention = student["accuracy"] / ensemble_acc if ensemble_acc > 0 else 0.0
    gain = student["accuracy"] - baseline["accuracy"]
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
        *common_gates(cfg, student, teachers),
        Gate(
            "calibration",
            student["ece"] <= cfg.max_ece + EPS,
            round(student["ece"], 4),
            cfg.max_ece,
            "<=",
            f"expected calibration error of the student ({ECE_BINS} bins)",
        ),
    ]
    if champion is None and champion_unscored:
        gates.append(
            Gate(
                "no_regression_vs_champion",
                False,
                None,
                cfg.max_regression,
                "<=",
                f"{champion_unscored}; a model that reads other data replaces the champion "
                "only by hand (kdflow promote), or register it under another --model-name",
            )
        )
    elif champion is None:
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
