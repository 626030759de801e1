"""The training split streamed into the loop through Ray Data (issue 18; DESIGN.md §9).

When a rank's rows and targets would not fit its budget (`stream_data`), the loop does not
read its shard into memory. Each epoch, each rank runs one Ray Data pipeline:

    this epoch's chunks for this rank (seeded order) ──► read tasks (no CPU of their
        own): a chunk's rows, as the data source gives them to models, and the
        ensemble's soft targets of those very rows from the teacher cache, shuffled
        together by a permutation seeded by (seed, epoch, rank, place in the plan)
        ──► iter_batches: blocks of BLOCK_BATCHES step batches ──► the loop slices steps

- A chunk is a row group of the prepared train split (`write_prepared` writes groups of
  `prepared.CHUNK_ROWS` rows), so a read decodes each group once per pass, and memory is a few
  chunks, whatever the number of rows.
- Shuffle: a seeded file order plus a local shuffle of one chunk (65,536 rows), done in
  the read task, where it runs in parallel with the loop. Not Ray Data's
  `local_shuffle_buffer_size`: the same window, but run by the consumer, it cost the loop a
  third of its input rate (2 M rows on 2 cores: 0.53 M rows/s against 0.83 M without it).
- Alignment: a read task takes rows [start, stop) of the split and the cache rows placed
  by their `row` index over the same range (`cache.ShardedEntry.train_rows`); inputs and
  targets travel in one block, so no later reordering can separate them.
- Order: the epoch's chunk order is a permutation drawn from (seed, epoch), the chunks
  dealt to the ranks by it (`epoch_plan`), the pipeline keeps its order
  (`preserve_order`), and each chunk's permutation is seeded by (seed, epoch, rank, its
  place in the plan): an epoch's batches depend on nothing else, so a run resumed from
  epoch k's checkpoint trains on the batches an undisturbed one would have.
- Every rank takes the same number of steps (DDP all-reduces once per step): a rank
  dealt fewer rows wraps around its own chunks, as the in-memory path pads its order.

Why not `TorchTrainer(datasets=...)` with `get_dataset_shard`: its `streaming_split`
runs one execution per epoch for all ranks and reseeds by execution count, so a run
resumed at epoch k would see epoch 1's order again; pipelines of the rank's own chunks,
planned from (seed, epoch), keep the order the issue asks for, with the same Ray Data
streaming executor, backpressure and read tasks underneath.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kdflow.data import storage
from kdflow.data.sources import DataSource, open_source
from kdflow.distill import cache as teacher_cache
from kdflow.distill.cache_fill import io_limits, io_tasks, raised_as
from kdflow.distill.losses import densify
from kdflow.distill.runtime import ensure_ray
from kdflow.distill.step import Batch
from kdflow.distill.targets import Ensemble, Targets
from kdflow.distill.tasks import task_named
from kdflow.errors import ConfigError, KdflowError

BLOCK_BATCHES = 64
"""Step batches per block the pipeline hands the loop (its cost is per block, not step)."""
STREAM_BYTES = 2 * 1024**3
"""`stream_data: auto` streams when a rank's rows and targets would exceed this."""


def chunks(dataset_uri: str) -> list[tuple[int, int]]:
    """The train split's row groups as row ranges [start, stop), from the footer alone."""
    out, first = [], 0
    with storage.parquet_file(storage.join(dataset_uri, "train.parquet")) as pf:
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if n:
                out.append((first, first + n))
            first += n
    return out


def epoch_plan(
    parts: list[tuple[int, int]], seed: int, world: int
) -> tuple[list[list[tuple[int, int]]], int]:
    """Each rank's chunks this epoch, and the rows every rank takes.

    The chunks are permuted by `seed` (the loop's (seed, epoch) seed) and dealt in that
    order, each to the rank with the fewest rows so far (the lowest on a tie); a rank
    short of the most-dealt rank's rows wraps around its own chunks again.
    """
    order = torch.randperm(len(parts), generator=torch.Generator().manual_seed(seed)).tolist()
    dealt: list[list[tuple[int, int]]] = [[] for _ in range(world)]
    rows = [0] * world
    for i in order:
        rank = min(range(world), key=lambda r: (rows[r], r))
        dealt[rank].append(parts[i])
        rows[rank] += parts[i][1] - parts[i][0]
    per_rank = max(rows)
    for rank in range(world):
        own, k = list(dealt[rank]), 0
        while rows[rank] < per_rank and own:
            dealt[rank].append(own[k % len(own)])
            rows[rank] += own[k % len(own)][1] - own[k % len(own)][0]
            k += 1
    return dealt, per_rank


STREAMED_KINDS = ("columns", "text", "image")


def check_applies(mode: str, kind: str, task: str) -> bool:
    """Whether a split of `kind` can stream; ConfigError when `--stream-data on` asks it of
    one that cannot (a causal-lm corpus: its packed blocks are read in memory)."""
    applies = task == "classification" and kind in STREAMED_KINDS
    if mode == "on" and not applies:
        raise ConfigError(
            f"--stream-data on: a {kind} split ({task}) is read in memory; streaming covers "
            f"classification of {', '.join(STREAMED_KINDS)}",
            option="--stream-data",
        )
    return applies


def needs_streaming(
    mode: str, source: DataSource, rows: int, world: int, target_bytes: int, task: str,
    encoder: Any = None,
) -> bool:
    """Whether the loop streams: `on`, `off`, or `auto` (a rank's rows as models read them,
    plus its share of the cached targets, past STREAM_BYTES)."""
    if mode == "off" or not check_applies(mode, source.meta.kind, task):
        return False
    if mode == "on":
        return True
    sample = source.read("train", 0, 1, encoder)
    per_row = sample.x.nbytes + sample.y.nbytes
    return (rows * per_row + target_bytes) // max(world, 1) > STREAM_BYTES


def cache_rows(caches: list[str], start: int, stop: int) -> list[dict[str, torch.Tensor]]:
    """Rows [start, stop) of each teacher's cache entry, as tensors: its train parts."""
    parts = []
    for uri in caches:
        entry = teacher_cache.open_entry(uri)
        if entry is None:
            raise KdflowError(f"teacher cache {uri} disappeared during the run")
        parts.append({k: torch.from_numpy(v) for k, v in entry.train_rows(start, stop).items()})
    return parts


@dataclass
class ChunkReader:
    """A read task of the pipeline: one chunk's rows and their soft targets. Built once
    per epoch; Ray ships it to the tasks."""

    dataset: str
    token_cache: str | None
    encoder: Any
    caches: list[str] = field(default_factory=list)
    ensemble: Ensemble | None = None

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        source = open_source(self.dataset, cache_root=self.token_cache)
        for start, stop, seed in zip(batch["start"], batch["stop"], batch["seed"], strict=True):
            yield self.read(source, int(start), int(stop), int(seed))

    def read(
        self, source: DataSource, start: int, stop: int, seed: int | None = None
    ) -> dict[str, np.ndarray]:
        """Rows [start, stop) and their targets; with `seed`, shuffled together by it."""
        out = self._read(source, start, stop)
        if seed is None:
            return out
        order = np.random.default_rng(seed).permutation(len(out["y"]))
        return {k: v[order] for k, v in out.items()}

    def _read(self, source: DataSource, start: int, stop: int) -> dict[str, np.ndarray]:
        split = source.read("train", start, stop, self.encoder)
        out: dict[str, np.ndarray] = {"x": split.x, "y": split.y}
        if self.caches:
            assert self.ensemble is not None
            parts = cache_rows(self.caches, start, stop)
            targets = task_named("classification").targets(parts, self.ensemble)
            assert isinstance(targets, Targets) and targets.entropy is not None
            if targets.dense is not None:
                out["soft"] = targets.dense.numpy()
            else:
                assert targets.probs is not None and targets.classes is not None
                out["probs"] = targets.probs.float().numpy()
                out["classes"] = targets.classes.long().numpy()
            out["entropy"] = targets.entropy.float().numpy()
        return out


@dataclass
class StreamedEpoch:
    """One role's pass over one epoch's stream: the step batches, and the Σ H(p_T) of the
    rows they held (the loop's reported KL subtracts it), known once the pass ends."""

    reader: ChunkReader
    plan: list[tuple[int, int]]
    rows: int
    """Rows this rank takes (the plan may hold more: the last block is cut)."""
    batch_size: int
    seed: int
    """(seed, epoch, rank), from the loop: with its place in the plan, each chunk's shuffle."""
    n_classes: int
    entropy_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))

    def entropy(self) -> torch.Tensor:
        return self.entropy_sum

    def blocks(self) -> Iterator[dict[str, np.ndarray]]:
        """Blocks of BLOCK_BATCHES × batch_size shuffled rows, through Ray Data."""
        import ray.data

        ensure_ray()  # an in-process loop (a teacher, `--workers 0`) starts Ray only here
        ds: Any = ray.data.from_items(
            [{"start": a, "stop": b, "seed": self.seed * 1_000_003 + i}
             for i, (a, b) in enumerate(self.plan)],
            override_num_blocks=max(1, len(self.plan)),
        )
        # Reads are I/O and decoding: no CPU of their own, so workers that hold every CPU
        # do not starve them (as the cache fill's reads).
        # At most IO_TASKS at once, read-ahead within PIPELINE_BYTES: a pass's memory
        # does not grow with the rows (cache_fill says why both).
        ds = ds.map_batches(self.reader, batch_size=1, num_cpus=0, compute=io_tasks())
        ds.context.execution_options.preserve_order = True
        io_limits(ds)  # read-ahead, and retries of transient storage errors
        ds.context.enable_progress_bars = False
        ds.context.print_on_execution_start = False  # two lines per role and epoch
        logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(
            logging.WARNING  # and its "execution finished" line
        )
        try:
            yield from ds.iter_batches(
                batch_size=self.batch_size * BLOCK_BATCHES,
                batch_format="numpy",
                drop_last=False,
            )
        except Exception as exc:  # Ray Data wraps what failed in a read task
            error = raised_as(exc)
            if error is None or error is exc:
                raise
            raise error from exc

    def batches(self, device: torch.device, kd: bool, transform: Any = None) -> Iterator[Batch]:
        left = self.rows
        for block in self.blocks():
            if left <= 0:
                return
            n = min(left, len(block["y"]))
            left -= n
            # Copies: Arrow's buffers are read-only, and one block is a few MB.
            x = torch.from_numpy(np.array(block["x"][:n]))
            y = torch.from_numpy(np.array(block["y"][:n], dtype=np.int64))
            soft = None
            if kd and "entropy" in block:
                self.entropy_sum = self.entropy_sum + float(block["entropy"][:n].sum())
                if "soft" in block:
                    soft = torch.from_numpy(np.array(block["soft"][:n]))
                else:
                    soft = densify(torch.from_numpy(np.array(block["probs"][:n])),
                                   torch.from_numpy(np.array(block["classes"][:n])),
                                   self.n_classes)
            parts = [x, y] + ([soft] if soft is not None else [])
            if device.type == "cuda":
                parts = [t.pin_memory().to(device, non_blocking=True) for t in parts]
            for i in range(0, n, self.batch_size):
                step = [t[i : i + self.batch_size] for t in parts]
                if transform is not None:
                    step[0], step[1] = transform(step[0], step[1])
                yield Batch(step[0], step[1], step[2] if len(step) > 2 else None)
        if left > 0:
            raise KdflowError(f"the training stream ended {left} rows short of its plan")
