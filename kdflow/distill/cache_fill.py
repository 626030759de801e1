"""Filling a classifier's teacher-cache entry: Ray Data batch inference (DESIGN.md §9).

    row groups of train.parquet ──► read tasks: blocks of rows, each tagged `row`
        ──► map_batches(predictor) on an actor pool (a GPU each where there are GPUs)
        ──► map_batches(write_shard) tasks: one Parquet shard per block
        ──► the driver: rows done (progress), then the entry's meta.json

The read is kdflow's own rather than `ray.data.read_parquet`, whose rows carry no
position (its `row_hash` is a hash, not the row number the loop's shards are cut by): each
read task reads one row group and numbers its rows from the group's first row, known from
the footer. Every shard keeps those numbers, and the reader places rows by them
(`cache.ShardedEntry.train_rows`), so however Ray Data orders, splits or shuffles the
blocks (it keeps no order unless `preserve_order` is set), targets stay aligned with the
rows they were computed on.

In-process runs (`workers=0`) start no Ray: `fill_here` runs the same read, predictor and
shard writer in this process, one block after the other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from kdflow import progress
from kdflow.data import storage
from kdflow.data.prepared import DatasetMeta
from kdflow.data.sources import feature_array
from kdflow.distill import cache as teacher_cache
from kdflow.errors import KdflowError

log = logging.getLogger(__name__)

BLOCK_ROWS = 4096
"""Rows per read block, per actor call and per shard: 4,096 RGB images at 224² are 617 MB
of pixels, 4,096 rows of 1,000 float16 logits 8 MB."""

IO_TASKS = 2
"""Read and write tasks a pipeline runs at once. They take no CPU of their own, so Ray Data
would start one per block at once, each in a new worker process that imports torch: 31 of
them for 2 M rows on 2 cores (4.5 GB of idle workers, and 51 s before a first block)."""
IO_RETRIES = 3
"""Times a read or write that failed with a transient storage error (Ray Data's
`retried_io_errors`: throttling, 5xx, a dropped connection), past pyarrow's own retries,
runs again before the step fails with the object's key. Other errors (no such file) fail
at once."""
PIPELINE_BYTES = 256 * 1024**2
"""Object-store memory a pipeline may hold ahead of its consumer (Ray Data's default is a
share of the whole store, gigabytes): its memory then does not grow with the rows."""

PROGRESS_SECONDS = 5.0
"""At most one progress line per teacher this often (and one at the end)."""


def input_columns(meta: DatasetMeta) -> list[str]:
    """The train split's columns a teacher reads: features, text, or the image files."""
    if meta.kind == "text":
        return list(meta.text_columns)
    if meta.kind == "image":
        return ["image"]
    return list(meta.feature_columns)


def model_inputs(table: pa.Table, meta: DatasetMeta, encoder: Any) -> np.ndarray:
    """A block's inputs as the data source gives them to models: float32 features, the
    teacher's own tokens (padded to its max length: blocks encode as the whole split
    does), or pixels decoded as the validate step decoded them."""
    if meta.kind == "text":
        return np.asarray(encoder.encode(
            [[str(v) for v in table.column(c).to_pylist()] for c in meta.text_columns]
        ))
    if meta.kind == "image":
        from kdflow.data.images import decode_many

        channels, height, width = meta.input_shape
        images = [bytes(v) for v in table.column("image").to_pylist()]
        return decode_many(images, (height, width), channels, threads=1)
    return feature_array(table, meta.feature_columns)


def row_groups(dataset_uri: str) -> list[tuple[int, int]]:
    """(row group, its first row) of the train split, from the Parquet footer alone."""
    groups, first = [], 0
    with storage.parquet_file(storage.join(dataset_uri, "train.parquet")) as pf:
        for g in range(pf.metadata.num_row_groups):
            groups.append((g, first))
            first += pf.metadata.row_group(g).num_rows
    return groups


def row_bytes(dataset_uri: str, columns: list[str]) -> int:
    """Uncompressed bytes per row of `columns` (and `row`), from the Parquet footer."""
    with storage.parquet_file(storage.join(dataset_uri, "train.parquet")) as pf:
        md = pf.metadata
        names = [md.schema.column(i).path.split(".")[0] for i in range(md.num_columns)]
        total = sum(
            md.row_group(g).column(i).total_uncompressed_size
            for g in range(md.num_row_groups) for i, name in enumerate(names) if name in columns
        )
        return 8 + total // max(md.num_rows, 1)


def read_groups(
    dataset_uri: str, columns: list[str], groups: list[tuple[int, int]], block_rows: int
) -> Iterator[pa.Table]:
    """The rows of `groups`, `block_rows` at a time, each block with its `row` column."""
    with storage.parquet_file(storage.join(dataset_uri, "train.parquet")) as pf:
        for group, first in groups:
            table = pf.read_row_group(group, columns=columns)
            for start in range(0, table.num_rows, block_rows):
                block = table.slice(start, block_rows)
                rows = np.arange(first + start, first + start + block.num_rows, dtype=np.int64)
                yield block.append_column("row", pa.array(rows))


def _read_batch(batch: dict[str, np.ndarray], dataset_uri: str, columns: list[str],
                block_rows: int) -> Iterator[pa.Table]:
    """Ray Data read step: the row groups named in one batch of (group, first) items."""
    groups = [(int(g), int(f)) for g, f in zip(batch["group"], batch["first"], strict=True)]
    yield from read_groups(dataset_uri, columns, groups, block_rows)


def _write_batch(table: pa.Table, folder: str) -> pa.Table:
    """Ray Data write step: one shard, and the line meta.json will list for it."""
    return pa.Table.from_pylist([teacher_cache.write_shard(folder, table)])


class _Progress:
    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self.done, self.started, self.last = 0, time.monotonic(), 0.0

    def add(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if now - self.last >= PROGRESS_SECONDS or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            progress.emit(self.label, self.done, self.total, f"{rate:,.0f} rows/s")


def fill_ray(
    dataset_uri: str,
    columns: list[str],
    predictor: type,
    predictor_kwargs: dict[str, Any],
    folder: str,
    total: int,
    actors: int,
    gpus: bool,
    label: str,
    block_rows: int | None = None,
) -> list[dict[str, Any]]:
    """Run `predictor` (a callable class: pa.Table block -> shard table) over the train
    split on `actors` actors, writing one shard per block under `folder`; returns the
    shards. Read and write tasks take no CPU of their own: they are I/O, and CPU actors
    may hold every CPU (`--cache-actors` 2 on two cores) without starving them."""
    import ray.data

    block_rows = block_rows or BLOCK_ROWS
    groups = row_groups(dataset_uri)
    ds: Any = ray.data.from_items([{"group": g, "first": f} for g, f in groups],
                             override_num_blocks=max(1, len(groups)))
    ds = ds.map_batches(_read_batch, batch_size=1, num_cpus=0, compute=io_tasks(),
                        fn_kwargs={"dataset_uri": dataset_uri, "columns": columns,
                                   "block_rows": block_rows})
    ds = ds.map_batches(
        predictor,
        fn_constructor_kwargs=predictor_kwargs,
        batch_size=block_rows,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1,
        num_gpus=1 if gpus else 0,
    )
    ds = ds.map_batches(_write_batch, fn_kwargs={"folder": folder}, batch_size=None,
                        batch_format="pyarrow", num_cpus=0, compute=io_tasks())
    io_limits(ds)
    # This dataset's own settings (a copy of the process's DataContext). A task's output
    # is merged into blocks of up to 128 MiB by default: a row group would reach a single
    # actor. Blocks of about `block_rows` rows spread over the pool. `streaming_repartition`
    # would do it too, but as a task of one CPU that waits forever where the actors hold
    # every CPU.
    ds.context.target_max_block_size = max(16_384, block_rows * row_bytes(dataset_uri, columns))
    ds.context.enable_progress_bars = False  # ours: below
    shards: list[dict[str, Any]] = []
    counter = _Progress(label, total)
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        written = batch.to_pylist()
        shards.extend(written)
        counter.add(sum(int(s["rows"]) for s in written))
    return shards


def io_tasks() -> Any:
    """The compute strategy of a pipeline's read and write stages: IO_TASKS tasks."""
    import ray.data

    return ray.data.TaskPoolStrategy(size=IO_TASKS)


def io_limits(ds: Any) -> None:
    """Keep `ds`'s read-ahead within PIPELINE_BYTES of the object store, and run a task
    that failed on a transient storage error again (IO_RETRIES)."""
    from ray.data import ExecutionResources

    ds.context.execution_options.resource_limits = ExecutionResources(
        object_store_memory=PIPELINE_BYTES
    )
    ds.context.retried_map_errors = list(ds.context.retried_io_errors)
    ds.context.max_map_retries = IO_RETRIES


def fill_here(
    dataset_uri: str,
    columns: list[str],
    predict: Callable[[pa.Table], pa.Table],
    folder: str,
    total: int,
    label: str,
    block_rows: int | None = None,
) -> list[dict[str, Any]]:
    """`fill_ray`'s pipeline in this process: the same blocks, predictor and shards."""
    counter = _Progress(label, total)
    shards = []
    groups = row_groups(dataset_uri)
    for block in read_groups(dataset_uri, columns, groups, block_rows or BLOCK_ROWS):
        shards.append(teacher_cache.write_shard(folder, predict(block)))
        counter.add(block.num_rows)
    return shards


RAY_DATA_RETRY_NOTE = "\nFailed to apply UDF transform"
"""Where Ray Data's note on a retried map's error begins (its attempts, how to configure)."""


def raised_as(exc: BaseException) -> KdflowError | None:
    """The KdflowError to raise for a failure in Ray (`kdflow_cause`), as this process's
    own class with the text it was raised with (less what Ray Data appends to a retried
    map's error), or None when no KdflowError caused it."""
    cause = kdflow_cause(exc)
    if cause is None or cause is exc:
        return cause
    return type(cause)(str(cause).split(RAY_DATA_RETRY_NOTE)[0].rstrip())


def kdflow_cause(exc: BaseException) -> KdflowError | None:
    """The KdflowError a Ray (Data) failure was caused by, however deeply Ray wrapped it
    (task errors, actor-died errors, Ray Data's user-code errors), or None. The error as
    raised, not Ray's copy of its class (a RayTaskError that is also a StorageError, whose
    text is the remote traceback)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    wrapped: KdflowError | None = None
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, KdflowError):
            if not type(e).__module__.startswith("ray"):
                return e
            wrapped = wrapped or e
        for attr in ("cause", "creation_task_error", "__cause__", "__context__"):
            nxt = getattr(e, attr, None)
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return wrapped
