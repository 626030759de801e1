"""CPU inference of the default student and teachers: PyTorch next to ONNX Runtime.

    python -m benchmarks.inference [--repeats 1000] [--batch-repeats 50]

Builds the default run's models (`DistillConfig().student`, and `TeacherConfig().teachers`,
`auto`, resolved for 8x8 images) for the digits shape (64 features, 10 classes), exports
each to ONNX as the evaluate step does, checks that ONNX Runtime predicts what PyTorch
predicts, and times all of them round-robin on one thread (batch-1 latency p50/p95,
throughput at batch 256) with
`kdflow.evaluation.timing.cpu_timings`. Weights are untrained: the time does not depend on them.
The table goes to stdout and to benchmarks/results/inference.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from kdflow.config import DistillConfig, TeacherConfig
from kdflow.evaluation.timing import THROUGHPUT_BATCH, cpu_timings, flops_per_sample, torch_runner
from kdflow.models.onnx import INPUT_NAME, OUTPUT_NAME, export_with_parity
from kdflow.models.zoo import build_classifier, count_params, resolve_teachers

RESULTS = Path(__file__).parent / "results" / "inference.md"
SHAPE, FEATURES, CLASSES = [1, 8, 8], 64, 10


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1000, help="Batch-1 timings per model.")
    parser.add_argument("--batch-repeats", type=int, default=50, help="Batch-256 timings.")
    ns = parser.parse_args(argv)
    load = os.getloadavg()[0]

    specs = {"student": DistillConfig().student} | {
        f"teacher {i}": spec
        for i, spec in enumerate(resolve_teachers(TeacherConfig().teachers, SHAPE))
    }
    runners, rows = {}, []
    x = np.random.default_rng(0).standard_normal((512, FEATURES)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for label, spec in specs.items():
            torch.manual_seed(0)
            model = build_classifier(spec, SHAPE, CLASSES, FEATURES).eval()
            path = Path(tmp) / f"{len(rows)}.onnx"
            session, parity = export_with_parity(
                model, FEATURES, path, x, what=f"the ONNX export of {spec}"
            )
            runners[f"{label}/torch"] = torch_runner(model)
            runners[f"{label}/onnx"] = (
                lambda s: lambda b: s.run([OUTPUT_NAME], {INPUT_NAME: b})
            )(session)
            rows.append((label, spec, model, path.stat().st_size, parity.max_abs_diff))
        timings = cpu_timings(runners, FEATURES, repeats=ns.repeats, warmup=50,
                              batch_repeats=ns.batch_repeats)

    lines = [
        "# Inference: PyTorch vs ONNX Runtime",
        "",
        f"`python -m benchmarks.inference --repeats {ns.repeats} --batch-repeats "
        f"{ns.batch_repeats}` on {platform.processor() or platform.machine()} "
        f"({os.cpu_count()} CPUs, load average {load:.1f} at the start), "
        f"torch {torch.__version__}, onnxruntime {_ort_version()}; one thread, models timed "
        "round-robin. Ratios are PyTorch time over ONNX Runtime time (> 1: ONNX Runtime is "
        "faster).",
        "",
        "| model | spec | params | FLOPs | ONNX KiB | PyTorch p50 / p95 ms | "
        "ONNX RT p50 / p95 ms | p50 ratio | PyTorch rows/s | ONNX RT rows/s | "
        f"throughput ratio (batch {THROUGHPUT_BATCH}) | max abs logit diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, spec, model, size, diff in rows:
        t, o = timings[f"{label}/torch"], timings[f"{label}/onnx"]
        assert t.throughput_per_s is not None and o.throughput_per_s is not None
        lines.append(
            f"| {label} | `{spec}` | {count_params(model):,} | "
            f"{flops_per_sample(model, FEATURES):,} | {size / 1024:,.1f} | "
            f"{t.latency_ms:.3f} / {t.latency_p95_ms:.3f} | "
            f"{o.latency_ms:.3f} / {o.latency_p95_ms:.3f} | {t.latency_ms / o.latency_ms:.2f}× | "
            f"{t.throughput_per_s:,.0f} | {o.throughput_per_s:,.0f} | "
            f"{o.throughput_per_s / t.throughput_per_s:.2f}× | {diff:.1e} |"
        )
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


if __name__ == "__main__":
    main()
