"""What a model costs to run on CPU: FLOPs, and batch-1 latency and batch throughput on one
thread, with the models timed round-robin so machine noise lands on all of them alike.

Each runner is timed on inputs of its own (`Timed`): a model of numeric columns on random
normal rows (its time does not depend on the values); a text model on real test rows
encoded by its own tokenizer (its time depends on the texts' lengths: it trims padding).
A text model is timed twice: on its encoded inputs (`latency_ms`, the model alone: what the
speedup gate compares, `kdflow.evaluation.gates`) and from the raw text, tokenizing
included (`latency_text_ms`, what a caller sending text waits for). An image model is timed
on real test pixels (uint8 N × C × H × W, its input), and the student and the teachers'
ensemble from the image files' bytes too, decoding and resizing included
(`latency_image_ms`, what a caller of the registered pyfunc waits for).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from kdflow.data.inputs import Encoder

THROUGHPUT_BATCH = 256

Runner = Callable[[Any], object]
"""Runs a model on one input (an array of rows, or column-wise raw texts for a text runner)."""


@dataclass
class Timing:
    """CPU speed of one model on one thread."""

    latency_ms: float
    """Median time of a batch-1 prediction."""
    latency_p95_ms: float
    """95th percentile of the same batch-1 timings."""
    throughput_per_s: float | None
    """Rows per second at batch THROUGHPUT_BATCH (median batch time); None when not measured."""


@dataclass
class Timed:
    """A runner and the inputs it is timed on."""

    run: Runner
    one: Any
    """A batch-1 input."""
    many: Any | None = None
    """A batch of `rows` inputs for the throughput; None: throughput not measured."""
    rows: int = THROUGHPUT_BATCH
    """Rows in `many`."""


def flops_per_sample(model: nn.Module, n_features: int) -> int:
    """FLOPs of one batch-1 forward pass (`kdflow.models.zoo.flops` gives the convention)."""
    from kdflow.models.zoo import flops

    return flops(model.cpu(), [n_features])


def model_flops(
    model: nn.Module, n_features: int, input_shape: Sequence[int] | None = None
) -> int | None:
    """FLOPs per sample of any model: its own `flops()` where it has one (a transformers
    model: `kdflow.models.hf.HfClassifier.flops`); counted with FlopCounterMode for a model
    of numeric columns (the zoo's, `python:` ones) or, given `input_shape` (C, H, W), of
    images (any image model takes a C × H × W sample, flat or not); None when neither can
    say."""
    own = getattr(model, "flops", None)
    if callable(own):
        return int(own())
    from kdflow.models.sources import encoder_of

    if encoder_of(model) is not None or n_features <= 0:
        return None
    try:
        if input_shape is not None:
            from kdflow.models.zoo import flops

            return flops(model.cpu(), list(input_shape))
        return flops_per_sample(model, n_features)
    except Exception:  # a user's module the counter cannot follow: no number, not a failure
        return None


def torch_runner(model: nn.Module) -> Runner:
    """A timing runner for a PyTorch model on its inputs (call it under torch.inference_mode)."""
    model = model.cpu().eval()
    return lambda x: model(torch.from_numpy(x))


def text_runner(model: nn.Module, encoder: Encoder) -> Runner:
    """A timing runner for a text model from raw text, tokenizing included: it takes the
    rows column-wise (`[[text, ...]]`, or `[[first, ...], [second, ...]]` for pairs)."""
    model = model.cpu().eval()
    return lambda columns: model(torch.from_numpy(encoder.encode(columns)))


def image_runner(models: Sequence[nn.Module], size: Sequence[int], channels: int) -> Runner:
    """A timing runner from image files' bytes (a list of them), decoding included: each
    file through `kdflow.data.images.decode_image` at `size` (H, W) and `channels`, the
    pyfunc's own preprocessing, on this thread only (the models run on one thread too);
    then the model's forward pass. Several models are the teachers' ensemble: the files are
    decoded once and their probabilities averaged, what a caller of the ensemble waits for."""
    from kdflow.data.images import decode_many

    nets = [m.cpu().eval() for m in models]

    def run(blobs: list[bytes]) -> torch.Tensor:
        x = torch.from_numpy(decode_many(blobs, size, channels, threads=1))
        if len(nets) == 1:
            return nets[0](x)
        return torch.stack([torch.softmax(net(x), -1) for net in nets]).mean(0)

    return run


def typical_image(blobs: Sequence[bytes]) -> int:
    """The image whose file has the median size in bytes: the image models' batch-1
    example (decoding time grows with the file), the same image for every model."""
    if not blobs:
        return 0
    order = np.argsort([len(b) for b in blobs], kind="stable")
    return int(order[(len(order) - 1) // 2])


def image_inputs(
    pixels: np.ndarray, blobs: Sequence[bytes], batch_size: int = THROUGHPUT_BATCH
) -> tuple[np.ndarray, np.ndarray, list[bytes], list[bytes]]:
    """An image model's timing inputs from the test split: its uint8 pixels (batch 1: the
    typical image; batch `batch_size`: the first rows, repeated when fewer) and the same
    images as their files' bytes (`blobs`: the first rows' files, in row order)."""
    row = typical_image(blobs)
    one, many = pixels[row : row + 1], first_rows(pixels, batch_size)
    order = np.resize(np.arange(len(blobs)), batch_size)
    return np.ascontiguousarray(one), many, [blobs[row]], [blobs[int(i)] for i in order]


def numeric_inputs(
    n_features: int, batch_size: int = THROUGHPUT_BATCH, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Random normal float32 rows, batch 1 and batch `batch_size`: a numeric model's time
    does not depend on the values."""
    rng = np.random.default_rng(seed)
    one = rng.standard_normal((1, n_features), dtype=np.float32)
    many = rng.standard_normal((batch_size, n_features), dtype=np.float32)
    return one, many


def typical_row(texts: Sequence[Sequence[str]]) -> int:
    """The row whose text (all columns) has the median length in characters: the text
    models' batch-1 example, the same row for every model whatever its tokenizer."""
    if not texts or not texts[0]:
        return 0
    lengths = np.sum([[len(t) for t in column] for column in texts], axis=0)
    order = np.argsort(lengths, kind="stable")
    return int(order[(len(order) - 1) // 2])


def first_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """The first `rows` rows of `x`, repeated from the start when it has fewer."""
    if len(x) == 0:
        raise ValueError("no rows to time on")
    return np.ascontiguousarray(np.resize(x[:rows], (rows, *x.shape[1:])))


def text_inputs(
    inputs: np.ndarray, texts: Sequence[Sequence[str]], batch_size: int = THROUGHPUT_BATCH
) -> tuple[np.ndarray, np.ndarray, list[list[str]], list[list[str]]]:
    """A text model's timing inputs from the test split: its encoded rows (batch 1: the
    typical row; batch `batch_size`: the first rows) and the same rows as raw text,
    column-wise."""
    row = typical_row(texts)
    one, many = inputs[row : row + 1], first_rows(inputs, batch_size)
    order = np.resize(np.arange(len(inputs)), batch_size)
    one_text = [[str(column[row])] for column in texts]
    many_text = [[str(column[int(i)]) for i in order] for column in texts]
    return np.ascontiguousarray(one), many, one_text, many_text


def cpu_timings(
    runners: Mapping[str, Runner | Timed],
    n_features: int | None = None,
    repeats: int = 300,
    warmup: int = 30,
    batch_repeats: int = 20,
    batch_size: int = THROUGHPUT_BATCH,
) -> dict[str, Timing]:
    """Batch-1 latency (p50, p95) and batch-`batch_size` throughput, on one CPU thread.

    A `Timed` runner runs on its own inputs; a plain runner on random normal rows of
    `n_features` features (one set shared by all of them). The runners are timed
    round-robin in the same loop, so noise from a busy machine lands on all of them alike
    and their ratios stay meaningful. ONNX Runtime sessions must be made with one intra-op
    thread (`kdflow.models.onnx.onnx_session` does) to compare fairly. `batch_repeats=0`
    skips the throughput measurement.
    """
    timed = _with_inputs(runners, n_features, batch_size)
    batched_runners = {n: t for n, t in timed.items() if t.many is not None}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                for t in timed.values():
                    t.run(t.one)
            single = _round_robin(timed, repeats, batched=False)
            batched: dict[str, list[float]] = {}
            if batch_repeats and batched_runners:
                for t in batched_runners.values():
                    t.run(t.many)
                batched = _round_robin(batched_runners, batch_repeats, batched=True)
    finally:
        torch.set_num_threads(threads)
    return {
        name: Timing(
            latency_ms=float(np.median(times) * 1e3),
            latency_p95_ms=float(np.percentile(times, 95) * 1e3),
            throughput_per_s=(
                float(timed[name].rows / np.median(batched[name])) if name in batched else None
            ),
        )
        for name, times in single.items()
    }


def _with_inputs(
    runners: Mapping[str, Runner | Timed], n_features: int | None, batch_size: int
) -> dict[str, Timed]:
    plain = [name for name, r in runners.items() if not isinstance(r, Timed)]
    if plain and n_features is None:
        raise ValueError(f"runners {', '.join(plain)} have no inputs of their own: give "
                         "n_features or time them as Timed")
    one, many = numeric_inputs(n_features or 0, batch_size) if plain else (None, None)
    return {
        name: r if isinstance(r, Timed) else Timed(r, one, many, batch_size)
        for name, r in runners.items()
    }


def _round_robin(timed: dict[str, Timed], repeats: int, batched: bool) -> dict[str, list]:
    times: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(repeats):
        for name, t in timed.items():
            x = t.many if batched else t.one
            start = time.perf_counter()
            t.run(x)
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
