"""What a model costs to run on CPU: FLOPs, and batch-1 latency and batch throughput on one
thread, with the models timed round-robin so machine noise lands on all of them alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

THROUGHPUT_BATCH = 256

Runner = Callable[[np.ndarray], object]


@dataclass
class Timing:
    """CPU speed of one model on one thread."""

    latency_ms: float
    """Median time of a batch-1 prediction."""
    latency_p95_ms: float
    """95th percentile of the same batch-1 timings."""
    throughput_per_s: float | None
    """Rows per second at batch THROUGHPUT_BATCH (median batch time); None when not measured."""


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
