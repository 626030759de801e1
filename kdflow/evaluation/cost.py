"""What a run cost and what its student saves: the ledger in `summary.json` (`cost`).

Each step measures itself (`Meter`): wall seconds, the CPU seconds its process and the
children it waited for used, and the resources it held (its CPU budget and GPUs), whose
product with the wall time is what a cluster bills: core-seconds and GPU-seconds. Ray Train
workers are other processes: their CPU time is not in `cpu_s`, but it is inside the step's
core-seconds, which count every core the step held for its whole wall time.

The saving is per request on the CPU: the ensemble's batch-1 latency (its teachers one after
another, as the evaluate step times them) less the student's, in PyTorch and in ONNX Runtime
(where the student exports), and per row at the throughput batch. One thread serves a
batch-1 request, so a millisecond saved is a millisecond of one core; the break-even is the
number of requests whose saving pays back the distillation's core-seconds (cache fill,
distillation and evaluation; and, in `with_teachers`, the teachers' training as well, for
a team that trained them only to distil).
"""

from __future__ import annotations

import os
import time
from typing import Any

STEPS = ("teachers", "cache_fill", "distillation", "evaluation")
"""The ledger's parts, in pipeline order; `total` is their sum."""
FIGURES = ("wall_s", "cpu_s", "core_s", "gpu_s")


class Meter:
    """`with Meter() as m: ...` then `m.record()`: the block's wall and CPU seconds and the
    cores and GPUs the process held (its CPU budget: affinity capped by the cgroup quota)."""

    def __enter__(self) -> Meter:
        self._wall = time.perf_counter()
        self._cpu = _cpu_seconds()
        self.wall_s = self.cpu_s = 0.0
        return self

    def __exit__(self, *_: object) -> None:
        self.wall_s = time.perf_counter() - self._wall
        self.cpu_s = _cpu_seconds() - self._cpu

    def record(self) -> dict[str, float]:
        return charge(self.wall_s, self.cpu_s)


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def held() -> tuple[int, int]:
    """(cores, GPUs) this process may use."""
    import torch

    from kdflow.distill.runtime import cpu_budget

    return cpu_budget(), torch.cuda.device_count() if torch.cuda.is_available() else 0


def charge(wall_s: float, cpu_s: float, cores: int | None = None, gpus: int | None = None
           ) -> dict[str, float]:
    """One part's figures: wall, CPU, and the core- and GPU-seconds held."""
    if cores is None or gpus is None:
        cores, gpus = held()
    return {"wall_s": round(wall_s, 3), "cpu_s": round(cpu_s, 3), "cores": cores, "gpus": gpus,
            "core_s": round(wall_s * cores, 3), "gpu_s": round(wall_s * gpus, 3)}


def _sum(records: list[dict[str, Any]]) -> dict[str, float]:
    return {k: round(sum(float(r.get(k) or 0.0) for r in records), 3) for k in FIGURES}


def split_distill(record: dict[str, Any], cache_fill_wall_s: float) -> dict[str, Any]:
    """The distill step's record as its two parts: filling the teacher cache (the share of
    its wall time the driver spent on teacher outputs) and the rest, the distillation."""
    wall = max(float(record["wall_s"]), 1e-9)
    share = min(max(cache_fill_wall_s / wall, 0.0), 1.0)
    return {
        "cache_fill": {k: round(float(record[k]) * share, 3) for k in FIGURES},
        "distillation": {k: round(float(record[k]) * (1 - share), 3) for k in FIGURES},
    }


def ledger(costs: dict[str, Any], evaluation: dict[str, Any], summary: dict[str, Any]
           ) -> dict[str, Any]:
    """`summary["cost"]`: each part's figures, their total, the saving per request and the
    break-even. `costs` holds the other steps' records: `teachers` (one per teacher, None
    where a step did not report) and `distill` (its record and `cache_fill_wall_s`; a list
    of them, one per seed, where --seeds ran several: their parts add up)."""
    parts: dict[str, Any] = {"teachers": _sum([t for t in costs.get("teachers") or [] if t])}
    distill = costs.get("distill") or []
    splits = [split_distill(d["record"], float(d.get("cache_fill_wall_s", 0.0)))
              for d in (distill if isinstance(distill, list) else [distill])
              if d and d.get("record")]
    parts |= {part: _sum([s[part] for s in splits]) for part in ("cache_fill", "distillation")}
    parts["evaluation"] = {k: float(evaluation.get(k, 0.0)) for k in FIGURES}
    total = _sum([parts[k] for k in STEPS])
    inference = saving(summary)
    paid = sum(parts[k]["core_s"] for k in ("cache_fill", "distillation", "evaluation"))
    with_teachers = paid + parts["teachers"]["core_s"]
    return {
        **parts,
        "total": total,
        "inference": inference,
        "break_even_requests": {
            runtime: _requests(paid, ms) for runtime, ms in inference["saving_ms"].items()
        },
        "break_even_requests_with_teachers": {
            runtime: _requests(with_teachers, ms)
            for runtime, ms in inference["saving_ms"].items()
        },
    }


def _requests(core_s: float, saving_ms: float | None) -> int | None:
    """Requests after which `saving_ms` a request has paid back `core_s` (None: no saving)."""
    if saving_ms is None or saving_ms <= 0:
        return None
    return int(-(-core_s * 1000.0 // saving_ms))  # ceil


def saving(summary: dict[str, Any]) -> dict[str, Any]:
    """Per request: the ensemble's and the student's CPU milliseconds in each runtime, and
    the saving (`pytorch` and `onnx` at batch 1; `pytorch_batch` and `onnx_batch` per row at
    --latency-batch, the ensemble in PyTorch). A causal LM's request is one generated token."""
    teachers, student = summary.get("teachers") or [], summary.get("student") or {}
    ensemble_ms = sum(float(t.get("latency_ms") or 0.0) for t in teachers)
    onnx = student.get("onnx") or {}
    rows = {
        "pytorch": (ensemble_ms, student.get("latency_ms")),
        "onnx": (ensemble_ms, onnx.get("latency_ms") if onnx.get("exported") else None),
    }
    throughputs = [t.get("throughput_per_s") for t in teachers]
    if throughputs and all(throughputs) and student.get("throughput_per_s"):
        per_row = sum(1000.0 / float(v) for v in throughputs)
        rows["pytorch_batch"] = (per_row, 1000.0 / float(student["throughput_per_s"]))
        if onnx.get("exported") and onnx.get("throughput_per_s"):
            rows["onnx_batch"] = (per_row, 1000.0 / float(onnx["throughput_per_s"]))
    return {
        "ensemble_ms": {k: round(v[0], 6) for k, v in rows.items()},
        "student_ms": {k: None if v[1] is None else round(float(v[1]), 6)
                       for k, v in rows.items()},
        "saving_ms": {k: None if v[1] is None else round(v[0] - float(v[1]), 6)
                      for k, v in rows.items()},
        "unit": "generated token" if summary.get("task") == "causal-lm" else "row",
    }
