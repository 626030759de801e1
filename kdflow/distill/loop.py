"""The training loop: every role of one run, side by side, epoch by epoch.

The roles train from the same initial weights and on the same batches: `student` on the
KD loss against the ensemble's soft targets, `baseline` on the labels alone, so that the
comparison isolates what distillation adds; a `teacher` trains as the baseline does and
keeps its best validation epoch. Each step is `kdflow.distill.step.kd_step`.

The loop runs wherever a `Reporter` puts it: in a Ray Train worker (each rank reads its
contiguous shard of the rows and of the cache; `kdflow.distill.ray_train`), in the step's
own process through Ray Train's local mode, or plainly in-process for a teacher. The
reporter gives the rank, the device and the checkpoint to resume from, and takes each
epoch's report.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from queue import Empty, Queue
from typing import Any, Protocol

import torch
from torch import nn

from kdflow.config import DistillConfig
from kdflow.data import storage
from kdflow.data.prepared import Split
from kdflow.data.sources import DataSource, open_source
from kdflow.distill import hints, sharding, stream
from kdflow.distill.checkpoints import restore_training, restore_weights
from kdflow.distill.runtime import seed_everything
from kdflow.distill.step import (
    Batch,
    OnlineTeachers,
    Role,
    apply_update,
    kd_step,
    optimizer_for,
)
from kdflow.distill.targets import Ensemble, SoftTargets
from kdflow.distill.tasks import Task, task_named
from kdflow.distill.teachers import load_teacher
from kdflow.models.sources import (
    build,
    encoder_of,
    learning_rate,
    source_for,
    source_of_folder,
)

log = logging.getLogger(__name__)

BLOCK_BATCHES = 64
"""Batches the loop gathers at once (64 × 64 rows × 64 float32 features: 1 MB)."""


@dataclass
class WorkerJob:
    """What every worker of one run receives: the run's settings as themselves (the same
    DistillConfig the CLI and the component built), and what the driver learned."""

    cfg: DistillConfig
    dataset: str
    """The prepared dataset (a folder or s3:// prefix)."""
    roles: list[str]
    """Which roles train: `student` and `baseline`, or one `teacher`."""
    seed: int
    run_dir: str
    """Where this run's checkpoints go (local or S3)."""
    in_process: bool = False
    task: str = "classification"
    ensemble: Ensemble | None = None
    caches: list[str] = field(default_factory=list)
    """Offline KD: each teacher's cache entry."""
    teachers: list[str] = field(default_factory=list)
    """Online KD: each teacher's folder."""
    stats: tuple[list[float], list[float]] | None = None
    """Per-input mean and std over the training split (every rank normalises the same)."""
    template: str | None = None
    """The student's initial model folder (`ModelSource.prepare`), for sources that need one
    (transformers: the tokenizer, the weights taken from a teacher)."""
    token_cache: str | None = None
    """Where encoded (tokenized) splits are cached: the run's storage path."""
    rows: int = 0
    """The training split's rows as the models read them (a corpus: packed blocks)."""
    vocab_size: int = 0
    """The shared vocabulary of a causal-lm run's models."""
    fail_at_epoch: int | None = None
    """Test hook: fail once after this epoch's checkpoint."""


class Reporter(Protocol):
    rank: int
    world: int
    device: torch.device

    def resume(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The tensors and state of the checkpoint to resume from, or None."""
        ...

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model on this worker's device (wrapped for data parallelism where needed)."""
        ...

    def report(
        self, stats: dict[str, Any], roles: list[Role], epoch: int, history: list[dict[str, Any]]
    ) -> None:
        """One epoch's metrics, with a checkpoint of every role."""
        ...


class InProcess:
    """The plain reporter: this process's device, no checkpoints (a teacher's training);
    `on_epoch(stats)` sees each epoch's metrics."""

    rank, world = 0, 1

    def __init__(
        self, device: torch.device, on_epoch: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.device, self.on_epoch = device, on_epoch

    def resume(self) -> None:
        return None

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def report(
        self, stats: dict[str, Any], roles: list[Role], epoch: int, history: list[dict[str, Any]]
    ) -> None:
        if self.on_epoch is not None:
            self.on_epoch(stats)


def shard_bounds(rows: int, rank: int, world: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous rows [start, stop); shard sizes differ by at most one.

    Contiguous shards let each worker read one byte range of the Parquet file and of the
    cache; the prepared train split is already shuffled, so a shard is a random sample.
    """
    return rows * rank // world, rows * (rank + 1) // world


def epoch_order(shard_rows: int, per_rank: int, seed: int) -> torch.Tensor:
    """This epoch's order of a shard's rows, padded by wrapping to `per_rank` rows so every
    rank takes the same number of steps (DDP all-reduces once per step).

    It depends only on (seed, epoch) through `seed`: a resumed run sees the batches an
    undisturbed one would, and every role sees the same batches.
    """
    order = torch.randperm(shard_rows, generator=torch.Generator().manual_seed(seed))
    if per_rank > shard_rows:
        order = torch.cat([order, order[: per_rank - shard_rows]])
    return order


def shard_targets(job: WorkerJob, task: Task, start: int, stop: int) -> SoftTargets:
    """This shard's ensemble soft targets from the cache: per teacher, the shards holding
    its rows (a classifier's entry) or one ranged read (a causal LM's)."""
    assert job.ensemble is not None
    return task.targets(stream.cache_rows(job.caches, start, stop), job.ensemble)


Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""A batch's (inputs, labels) -> the views every role trains on (noise, image augmentation)."""


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    device: torch.device,
    targets: SoftTargets | None = None,
    transform: Transform | None = None,
) -> Iterator[Batch]:
    """Batches of the rows in `order`, with their cached soft targets when given.

    Rows are gathered BLOCK_BATCHES batches at a time and then sliced: one large gather
    costs about what one small one does, and a slice is a view. On GPU each block goes
    through pinned memory in one copy. `transform` (Gaussian noise, image augmentation,
    drawn from a generator the caller seeds) makes each batch's views before anything sees
    them: the same seed gives every role the same views.
    """
    pin = device.type == "cuda"
    for start in range(0, len(order), batch_size * BLOCK_BATCHES):
        idx = order[start : start + batch_size * BLOCK_BATCHES]
        block = [x[idx], y[idx]] + ([targets.rows(idx)] if targets is not None else [])
        if pin:
            block = [t.pin_memory().to(device, non_blocking=True) for t in block]
        for i in range(0, len(idx), batch_size):
            parts = [t[i : i + batch_size] for t in block]
            if transform is not None:
                parts[0], parts[1] = transform(parts[0], parts[1])
            yield Batch(parts[0], parts[1], parts[2] if len(parts) > 2 else None)


def prefetched(items: Iterator[Batch], depth: int = 2) -> Iterator[Batch]:
    """`items`, made `depth` ahead on a background thread, so that augmenting the next batch
    overlaps the current step (torch releases the GIL in its kernels). An exception in the
    producer is raised here; a consumer that stops early stops the producer at its next
    batch."""
    done = object()
    queue: Queue[Any] = Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                queue.put(item)
        except BaseException as exc:  # handed to the consumer, which raises it
            queue.put(exc)
            return
        queue.put(done)

    thread = threading.Thread(target=produce, name="kdflow-batches", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                queue.get_nowait()
            except Empty:
                thread.join(0.01)


def run_epoch(
    role: Role,
    steps: Iterator[Batch],
    task: Task,
    temperature: float,
    device: torch.device,
    teachers: OnlineTeachers | None = None,
    entropy: torch.Tensor | Callable[[], torch.Tensor] | None = None,
    accumulate: int = 1,
) -> dict[str, float]:
    """One pass of `role` over `steps`: the row means of the loss and its parts.

    `soft_loss` is the KL to the teachers' targets, the cross-entropy less their mean
    entropy (`entropy`: the cached targets' Σ H(p_T) over the epoch's rows; online, each
    step's; streamed, a callable that gives the sum once the pass is over). `loss` is then
    what `kd_loss` reports, with the teachers' entropy. Losses stay on the device until
    the end: a `.item()` per step would stall a GPU on every batch.
    """
    role.model.train()
    kept: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("total", "hard", "soft", "feature", "attention")
    }
    entropies: list[torch.Tensor] = []
    sizes: list[int] = []
    pending = 0  # batches whose gradients wait for the optimizer (`accumulate`)
    for batch in steps:
        pending += 1
        out = kd_step(role, batch, task, temperature, device, teachers, accumulate,
                      update=pending == accumulate)
        pending %= accumulate
        for name in kept:
            value = out.parts.total.detach() if name == "total" else getattr(out.parts, name)
            if value is not None:
                kept[name].append(value)
        if out.parts.hard is None:  # pure KD: the label loss is reported, not trained on
            # Per step, off the graph: an epoch's logits kept for one loss at the end grew
            # with the rows (20 M rows of 10 classes: 0.9 GB per worker).
            with torch.no_grad():
                kept["hard"].append(task.hard_loss(out.logits.detach(), batch.y))
        if out.entropy is not None:
            entropies.append(out.entropy)
        sizes.append(len(batch.y))
    if pending:  # the epoch's last batches: their gradients are not carried over
        apply_update(role)
    if entropy is not None:
        entropies.append(entropy() if callable(entropy) else entropy)
    seen = sum(sizes)
    if not seen:
        return {"loss": 0.0, "hard_loss": 0.0, "soft_loss": 0.0, "rows": 0}
    weights = torch.tensor(sizes, dtype=torch.float32, device=kept["total"][0].device)

    def mean(values: list[torch.Tensor]) -> float:
        return float((torch.stack(values).float() * weights).sum() / weights.sum())

    means = {name: mean(v) for name, v in kept.items() if v}
    mean_entropy = float(torch.stack(entropies).sum()) / seen if entropies else 0.0
    kd_share = (1.0 - role.alpha) * temperature**2 if role.kd else 0.0
    result = {
        "loss": means["total"] - kd_share * mean_entropy,
        "hard_loss": means.get("hard", 0.0),
        "soft_loss": means.get("soft", 0.0) - mean_entropy if role.kd and role.alpha < 1 else 0.0,
        "rows": seen,
    }
    for name in ("feature", "attention"):
        if name in means:
            result[f"{name}_loss"] = means[name]
    return result


def build_roles(
    job: WorkerJob,
    source: DataSource,
    device: torch.device,
    teachers: OnlineTeachers | None,
    template: Path | None = None,
) -> list[Role]:
    """Each role's model, optimizer and schedule, from the same seed: identical initial
    weights (DDP broadcasts rank 0's anyway), so the roles differ only by their loss. A
    student with hints is a `HintedStudent`; its projections are drawn after its weights,
    so they do not change them."""
    cfg = job.cfg
    mean, std = job.stats or source.input_stats()
    roles = []
    for name in job.roles:
        seed_everything(job.seed)
        kd = name == "student"
        plan = None
        if kd and cfg.uses_hints and teachers is not None and teachers.taps is not None:
            plan = teachers.taps.plan
            seed_everything(job.seed)
        classifier = build(cfg.student, source.meta, (mean, std), template=template)
        model = classifier if plan is None else hints.HintedStudent(classifier, plan)  # type: ignore[arg-type]
        lr = learning_rate(cfg.student, name, cfg.student_lr, source.meta.kind)
        optimizer, scheduler = optimizer_for(model, lr, cfg.student_epochs)
        roles.append(
            Role(
                name,
                model,
                classifier,
                optimizer,
                scheduler,
                kd=kd,
                alpha=cfg.alpha if kd else 1.0,
                plan=plan,
                keep_best=name == "teacher",
            )
        )
    return roles


def online_teachers(
    job: WorkerJob,
    source: DataSource,
    task: Task,
    device: torch.device,
    template: Path | None = None,
) -> OnlineTeachers | None:
    """The teachers on this worker's device, when the student learns from them online;
    with hints, the hint teacher's taps and the plan pairing its layers with the student's."""
    cfg = job.cfg
    if cfg.teacher_mode != "online" or "student" not in job.roles:
        return None
    assert job.ensemble is not None
    loaded = [load_teacher(u, source.meta) for u in job.teachers]
    models = [m.to(device).eval() for m, _ in loaded]
    taps = None
    if cfg.uses_hints:
        seed_everything(job.seed)
        student = build(cfg.student, source.meta, template=template).to(device)
        teacher, saved = models[cfg.hint_teacher], loaded[cfg.hint_teacher][1]
        plan = hints.make_plan(
            cfg,
            teacher,  # type: ignore[arg-type]
            student,  # type: ignore[arg-type]
            source_of_folder(saved, job.teachers[cfg.hint_teacher]),
            source_for(cfg.student),
        )
        taps = hints.TeacherTaps(teacher, plan)  # type: ignore[arg-type]
    return OnlineTeachers(models, job.ensemble, task, taps)


def train(job: WorkerJob, reporter: Reporter) -> tuple[list[Role], list[dict[str, Any]]]:
    """Train every role of `job` for its epochs (resuming where the reporter says), and
    return the roles (teachers with their best epoch's weights) and the history."""
    with storage.optional_local_dir(job.template) as template:
        return _train(job, reporter, template)


def _train(
    job: WorkerJob, reporter: Reporter, template: Path | None
) -> tuple[list[Role], list[dict[str, Any]]]:
    cfg, task = job.cfg, task_named(job.task, job.cfg)
    rank, world, device = reporter.rank, reporter.world, reporter.device
    source = open_source(job.dataset, cache_root=job.token_cache)
    if job.stats is None:  # one pass over the training split, for normalisation and noise
        job = replace(job, stats=source.input_stats())
    teachers = online_teachers(job, source, task, device, template)
    roles = build_roles(job, source, device, teachers, template)
    # Each model reads the rows as it encodes them (text: its tokenizer, once per run; a
    # corpus's rows are the blocks its tokenizer packs).
    encoder = encoder_of(roles[0].classifier)
    rows = source.rows("train", encoder)
    offline = cfg.teacher_mode == "offline" and "student" in job.roles
    cached_bytes = rows * source.meta.n_classes * 4 if offline else 0  # dense float32
    streamed = stream.needs_streaming(
        cfg.stream_data, source, rows, world, cached_bytes, task.name, encoder
    )
    targets: SoftTargets | None = None
    if streamed:  # chunk by chunk through Ray Data, each epoch (kdflow.distill.stream)
        reader = stream.ChunkReader(job.dataset, job.token_cache, encoder,
                                    job.caches if offline else [], job.ensemble)
        groups = stream.chunks(job.dataset)
        x = y = torch.zeros(0)
        log.info("rank %d streams %d rows in %d chunks", rank, rows, len(groups))
    else:
        start, stop = shard_bounds(rows, rank, world)
        targets = shard_targets(job, task, start, stop) if offline else None
        train_rows = source.read("train", start, stop, encoder)
        x, y = torch.from_numpy(train_rows.x), torch.from_numpy(train_rows.y)
    val: Split | None = source.read("val", encoder=encoder) if rank == 0 else None
    first_epoch, history = 1, []
    resumed = reporter.resume()
    if resumed:
        tensors, state = resumed
        restore_weights(roles, tensors)
        first_epoch, history = state["epoch"] + 1, state["history"]
        log.info("rank %d resumes at epoch %d", rank, first_epoch)
    sharded = cfg.parallel == "fsdp" and world > 1
    for r in roles:
        if sharded:  # FSDP: the model with its loss, optimizer over the shards
            sharding.shard(r, task, cfg.temperature, device, rank)
        else:
            r.model = reporter.prepare(r.model)
    if resumed:
        restore_training(roles, *resumed)

    assert job.stats is not None
    views = Views(cfg, job.stats, source.meta.n_classes)
    batch_size = max(1, cfg.student_batch_size // world)
    per_rank = math.ceil(rows / world)
    for epoch in range(first_epoch, cfg.student_epochs + 1):
        epoch_seed = job.seed * 100_003 + epoch
        entropy: torch.Tensor | Callable[[], torch.Tensor] | None = None
        if streamed:
            plans, per_rank = stream.epoch_plan(groups, epoch_seed, world)
        else:
            order = epoch_order(len(x), per_rank, epoch_seed)
            # The cached targets' entropy over this epoch's rows, for the reported KL.
            if targets is not None and targets.entropy is not None:
                entropy = targets.entropy[order].sum()
        stats: dict[str, Any] = {"epoch": epoch, "tokenize_seconds": source.tokenize_seconds}
        for r in roles:
            # A fresh generator per role: every role sees the same noisy or augmented views.
            transform = views.transform(job.seed * 100_003 + epoch * 1_009 + rank)
            if streamed:
                passed = stream.StreamedEpoch(
                    reader if r.kd else replace(reader, caches=[]), plans[rank], per_rank,
                    batch_size, epoch_seed * 31 + rank, source.meta.n_classes,
                )
                steps = passed.batches(device, r.kd, transform)
                if r.kd and reader.caches:
                    entropy = passed.entropy
            else:
                steps = batches(
                    x, y, order, batch_size, device, targets if r.kd else None, transform
                )
            if transform is not None:
                steps = prefetched(steps)
            started = time.perf_counter()
            losses = run_epoch(
                r, steps, task, cfg.temperature, device, teachers, entropy if r.kd else None,
                cfg.grad_accum,
            )
            seconds = time.perf_counter() - started
            r.scheduler.step()
            if r.sharded is not None:  # every rank: the full state, for rank 0's copy
                sharding.gather(r, device, rank)
            seen = losses.pop("rows")
            stats |= {f"{r.name}/{k}": v for k, v in losses.items()} | {
                f"{r.name}/seconds": seconds,
                f"{r.name}/rows_per_s": seen * world / seconds,
                # What rank 0 holds between steps: all of it (DDP) or its shard (FSDP).
                f"{r.name}/worker_params": sum(p.numel() for p in r.model.parameters()),
            }
            if val is not None:
                stats |= _validate(r, task, val)
        history.append(stats)
        reporter.report(stats, roles, epoch, history)
    for r in roles:
        if r.keep_best and r.best_state is not None:
            r.classifier.load_state_dict(r.best_state)
    return roles, history


class Views:
    """The views of each training batch: --augment-noise's Gaussian noise on numeric
    columns, --augment's image augmentations (`kdflow.data.augment`), or the rows as
    they are."""

    def __init__(
        self, cfg: DistillConfig, stats: tuple[list[float], list[float]], n_classes: int
    ) -> None:
        self.noise_scale = cfg.augment_noise * torch.tensor(stats[1])  # in feature stds
        self.augmenter = None
        if cfg.augment:
            from kdflow.data.augment import Augmenter

            self.augmenter = Augmenter(cfg.augment, n_classes)

    def transform(self, seed: int) -> Transform | None:
        """This epoch's transform, drawing from a generator seeded with `seed`; None when
        batches are used as they are."""
        generator = torch.Generator().manual_seed(seed)
        if self.augmenter is not None:
            augmenter = self.augmenter
            return lambda x, y: augmenter(x, y, generator)
        if self.noise_scale.numel() and bool(self.noise_scale.any()):
            scale = self.noise_scale

            def noisy(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                draw = torch.randn(x.shape, generator=generator)
                return x + (draw * scale).to(x.device), y

            return noisy
        return None


def role_history(history: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    """One role's epochs from the loop's history: `student/loss` becomes `loss`."""
    prefix = role + "/"
    return [
        {k.removeprefix(prefix): v for k, v in h.items() if k.startswith(prefix)}
        | {"epoch": h["epoch"]}
        for h in history
    ]


def _validate(role: Role, task: Task, val: Split) -> dict[str, float]:
    score = task.score(role.scored, val)
    if score > role.best_acc:
        role.best_acc = score
        if role.keep_best:
            role.best_state = {
                k: v.detach().clone() for k, v in role.scored.state_dict().items()
            }
    return {
        f"{role.name}/val_{task.metric}": score,
        f"{role.name}/best_val_{task.metric}": role.best_acc,
    }
