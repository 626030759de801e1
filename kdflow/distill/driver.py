"""Distil a teacher ensemble into a student with Ray Train, next to a no-distillation baseline.

Offline KD (the default): each teacher's logits over the training split are computed once,
in parallel Ray tasks (a GPU each where the cluster has GPUs), and cached as float16
(optionally top-k) under the storage path, keyed by the data and the teacher's weights
(`kdflow.distill.cache`); later runs reuse them. Online KD (`teacher_mode="online"`) runs
the teachers on every batch instead, which augmentation needs. Both modes round the
teachers' logits to float16 (and top-k) the same way, so on the same data they train the
same student.

Training runs in Ray Train V2 (`TorchTrainer`): data-parallel over `workers`, each worker
reading only its contiguous shard of the rows and of the cache, a checkpoint every epoch
(weights, optimizer, scheduler, epoch, RNG) as safetensors + JSON, and
`FailureConfig(max_failures)` so a failed worker resumes from the last checkpoint. Runs are
named after the pipeline run, so a retried pipeline run resumes too. With `workers=0` the
same loop runs in this process (Ray Train's local mode: no Ray start, no worker processes);
its checkpoints are then written by the loop itself, to the same place and in the same
format, and a rerun of the same run resumes from them. Checkpoints and caches
go to a folder or S3 (`kdflow.data.storage`). With `ray_address` set,
`kdflow.distill.cluster` submits the same code as a Ray job to a running cluster.
"""

from __future__ import annotations

import logging
import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from kdflow.config import DistillConfig
from kdflow.data import storage
from kdflow.data.prepared import DatasetMeta, Split
from kdflow.distill import cache as teacher_cache
from kdflow.distill import hints
from kdflow.distill.losses import (
    attention_loss,
    densify,
    entropy,
    hint_loss,
    kd_objective,
    soft_targets,
    sparse_soft_targets,
)
from kdflow.distill.training import (
    accuracy,
    cpu_budget,
    limit_threads,
    predict_logits,
    seed_everything,
)
from kdflow.errors import ConfigError, DataError, KdflowError
from kdflow.models.artifacts import (
    flatten_optimizer_state,
    load_model,
    load_tensors,
    save_model,
    save_tensors,
    unflatten_optimizer_state,
)
from kdflow.models.zoo import Classifier, build_classifier, count_params, parse_spec

log = logging.getLogger(__name__)

STREAM_ROWS = 65_536
"""Rows per batch when teachers stream over the training split to fill the cache."""
BLOCK_BATCHES = 64
"""Batches the training loop gathers at once (64 × 64 rows × 64 float32 features: 1 MB)."""


@dataclass
class StudentResult:
    val_accuracy: float
    params: int
    epochs: int
    history: list[dict[str, float]]


# ------------------------------------------------------------------------------- data


def load_meta(dataset_uri: str) -> DatasetMeta:
    uri = storage.join(dataset_uri, "meta.json")
    if not storage.exists(uri):
        raise DataError(f"{dataset_uri}: not a prepared kdflow dataset (no meta.json)")
    return DatasetMeta(**storage.read_json(uri))


def _features(table: Any, columns: list[str]) -> np.ndarray:
    if table.num_rows == 0:
        return np.zeros((0, len(columns)), np.float32)
    return np.stack(
        [table.column(c).to_numpy(zero_copy_only=False) for c in columns], axis=1
    ).astype(np.float32, copy=False)


def load_rows(
    dataset_uri: str, split: str, meta: DatasetMeta, start: int = 0, stop: int | None = None
) -> Split:
    """Rows [start, stop) of a split, reading only the Parquet row groups that hold them."""
    table = storage.read_parquet_rows(
        storage.join(dataset_uri, f"{split}.parquet"),
        start,
        stop,
        columns=[*meta.feature_columns, "label"],
    )
    y = table.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
    return Split(x=_features(table, meta.feature_columns), y=y)


def feature_stats(dataset_uri: str, meta: DatasetMeta) -> tuple[list[float], list[float]]:
    """Mean and (unbiased) standard deviation of each feature over the whole training split.

    Streamed in float64, so every worker normalises with the same statistics whatever its
    shard, and memory stays at one batch of rows.
    """
    total = np.zeros(meta.n_features)
    squares = np.zeros(meta.n_features)
    n = 0
    with storage.parquet_file(storage.join(dataset_uri, "train.parquet")) as pf:
        for batch in pf.iter_batches(STREAM_ROWS, columns=meta.feature_columns):
            x = _features(batch, meta.feature_columns).astype(np.float64)
            total += x.sum(0)
            squares += (x * x).sum(0)
            n += len(x)
    mean = total / max(n, 1)
    var = (squares - n * mean * mean) / max(n - 1, 1)
    return mean.tolist(), np.sqrt(np.maximum(var, 0.0)).tolist()


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


# ------------------------------------------------------------------------- soft targets


def teacher_parts(logits: torch.Tensor, top_k: int) -> dict[str, torch.Tensor]:
    """A teacher's logits as the cache stores them: float16, in full or its top-k."""
    z = logits.half()
    if not top_k:
        return {"train": z}
    values, indices = z.float().topk(top_k, dim=-1)
    dtype = torch.int16 if logits.shape[-1] <= torch.iinfo(torch.int16).max else torch.int32
    return {"train_values": values.half(), "train_indices": indices.to(dtype)}


@dataclass
class Targets:
    """Ensemble soft targets of some rows: dense N × C, or sparse (probabilities, classes).

    `entropy` holds each row's H(p_T): the loop trains on the cross-entropy H(p_T, q) and
    subtracts it to report the KL.
    """

    n_classes: int
    dense: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    classes: torch.Tensor | None = None
    entropy: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.entropy is None and self.dense is not None:
            self.entropy = entropy(self.dense)
        elif self.entropy is None:
            assert self.probs is not None
            n = len(self.probs)
            blocks = [
                entropy(self.rows(torch.arange(i, min(i + STREAM_ROWS, n))))
                for i in range(0, n, STREAM_ROWS)
            ]
            self.entropy = torch.cat(blocks) if blocks else torch.zeros(0)

    def rows(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """Dense float32 targets of the rows `index` (all rows when None)."""
        if self.dense is not None:
            return self.dense if index is None else self.dense[index]
        assert self.probs is not None and self.classes is not None
        probs = self.probs if index is None else self.probs[index]
        classes = self.classes if index is None else self.classes[index]
        return densify(probs, classes, self.n_classes)

    @property
    def nbytes(self) -> int:
        parts = (self.dense, self.probs, self.classes, self.entropy)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)


def ensemble_targets(
    parts: list[dict[str, torch.Tensor]],
    n_classes: int,
    temperature: float,
    mode: str,
    weights: list[float],
    separate: bool = False,
) -> Targets:
    """The ensemble's soft targets from each teacher's (cached or fresh) float16 logits.

    `separate` (multi_teacher="separate") keeps the same targets but sets each row's
    `entropy` to Σ_k w_k H(p_k): the loop then reports Σ_k w_k KL(p_k ‖ q), the per-teacher
    loss, whose gradient is that of KL(p̄ ‖ q) (`kdflow.distill.losses.separate_kd_loss`).
    """
    if "train" in parts[0]:
        logits = [p["train"] for p in parts]
        targets = Targets(n_classes, dense=soft_targets(logits, temperature, mode, weights))
    else:
        probs, classes = sparse_soft_targets(
            [p["train_values"] for p in parts],
            [p["train_indices"] for p in parts],
            temperature,
            mode,
            weights,
        )
        targets = Targets(
            n_classes, probs=probs, classes=classes.to(parts[0]["train_indices"].dtype)
        )
    if separate and len(parts) > 1:
        w = torch.tensor(weights if mode == "weighted_probs" else [1.0] * len(parts))
        each = [
            ensemble_targets([p], n_classes, temperature, "mean_probs", [1.0]).entropy
            for p in parts
        ]
        targets.entropy = torch.einsum(
            "k,kn->n", w / w.sum(), torch.stack([e for e in each if e is not None])
        )
    return targets


# ----------------------------------------------------------------------------- teachers


def _load_teacher(uri: str, meta: DatasetMeta) -> tuple[Classifier, dict[str, Any]]:
    with storage.local_dir(uri) as folder:
        model, spec = load_model(folder)
    if spec["n_features"] != meta.n_features or spec["n_classes"] != meta.n_classes:
        raise KdflowError(
            f"teacher {uri} expects {spec['n_features']} features and {spec['n_classes']} "
            f"classes; the data has {meta.n_features} and {meta.n_classes}"
        )
    return model, spec


def _teacher_task(
    dataset_uri: str,
    teacher_uri: str,
    meta_values: dict[str, Any],
    cache_uri: str | None,
    entry_meta: dict[str, Any],
) -> dict[str, Any]:
    """One teacher's validation logits and, for the cache, its logits over the train split.

    Runs as a Ray task (a GPU when the cluster has them); the train split streams through
    in batches of STREAM_ROWS, so memory is the cache entry plus one batch.
    """
    started = time.monotonic()
    meta = DatasetMeta(**meta_values)
    model, _ = _load_teacher(teacher_uri, meta)
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    val = load_rows(dataset_uri, "val", meta)
    val_logits = predict_logits(model, val.x).half().numpy()
    if cache_uri:
        top_k = int(entry_meta["top_k"])
        rows = int(entry_meta["rows"])
        arrays: dict[str, np.ndarray] = {}
        done = 0
        with storage.parquet_file(storage.join(dataset_uri, "train.parquet")) as pf:
            for batch in pf.iter_batches(STREAM_ROWS, columns=meta.feature_columns):
                x = _features(batch, meta.feature_columns)
                parts = teacher_parts(predict_logits(model, x), top_k)
                for name, t in parts.items():
                    if name not in arrays:
                        arrays[name] = np.empty((rows, t.shape[1]), t.numpy().dtype)
                    arrays[name][done : done + len(x)] = t.numpy()
                done += len(x)
        if done != rows:
            raise DataError(f"{dataset_uri}: train.parquet has {done} rows, meta.json says {rows}")
        teacher_cache.write_entry(cache_uri, arrays, val_logits, entry_meta)
    return {"val_logits": val_logits, "seconds": time.monotonic() - started}


@dataclass
class TeacherOutputs:
    uri: str
    spec: dict[str, Any]
    val_logits: np.ndarray
    cache: str | None
    cache_hit: bool
    seconds: float


def _ray_get(refs: list[Any]) -> list[Any]:
    """ray.get, re-raising a task's KdflowError as itself rather than wrapped."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(refs)
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, KdflowError):
            raise type(cause)(str(cause)) from exc
        raise


def teacher_outputs(
    dataset_uri: str,
    teacher_uris: list[str],
    meta: DatasetMeta,
    cfg: DistillConfig,
    storage_root: str,
    top_k: int,
) -> list[TeacherOutputs]:
    """Each teacher's validation logits; offline, also its cache entry, filled if missing.

    Cached teachers cost one read of their validation logits; the others run in parallel,
    one Ray task each. Online mode writes no cache but reads validation logits from one.
    """
    offline = cfg.teacher_mode == "offline"
    key = teacher_cache.dataset_key(dataset_uri)
    outputs: dict[int, TeacherOutputs] = {}
    pending: dict[int, tuple[str, dict[str, Any], str, dict[str, Any]]] = {}
    for i, uri in enumerate(teacher_uris):
        spec = _teacher_spec(uri)
        entry_meta = {
            "dataset_key": key,
            "teacher_sha256": spec["weights_sha256"],
            "top_k": top_k,
            "rows": int(meta.rows["train"]),
            "classes": meta.n_classes,
        }
        cache = teacher_cache.entry_uri(storage_root, key, spec["weights_sha256"], top_k)
        entry = teacher_cache.CacheEntry.open(cache)
        if entry is not None and entry.matches(entry_meta):
            log.info("teacher %d (%s): cached outputs %s", i, parse_spec(spec["model"]), cache)
            outputs[i] = TeacherOutputs(
                uri, spec, entry.rows("val"), cache if offline else None, True, 0.0
            )
            continue
        pending[i] = (uri, spec, cache, entry_meta)
    done = []
    if pending:
        import ray

        ensure_ray()
        gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        task = ray.remote(_teacher_task)
        refs = [
            task.options(num_cpus=1, num_gpus=gpus, name=f"kdflow-teacher-{i}").remote(
                dataset_uri, uri, asdict(meta), cache if offline else None, entry_meta
            )
            for i, (uri, _, cache, entry_meta) in pending.items()
        ]
        done = _ray_get(refs)
    for (i, (uri, spec, cache, _)), out in zip(pending.items(), done, strict=True):
        outputs[i] = TeacherOutputs(
            uri, spec, out["val_logits"], cache if offline else None, False, out["seconds"]
        )
    return [outputs[i] for i in range(len(teacher_uris))]


def _teacher_spec(uri: str) -> dict[str, Any]:
    from kdflow.errors import ModelFormatError

    spec_uri = storage.join(uri, "spec.json")
    if not storage.exists(spec_uri):
        raise ModelFormatError(
            f"{uri}: no spec.json; a kdflow model is a folder with model.safetensors and spec.json"
        )
    spec: dict[str, Any] = storage.read_json(spec_uri)
    if "weights_sha256" not in spec or "model" not in spec:
        raise ModelFormatError(f"{spec_uri}: missing keys model / weights_sha256")
    return spec


def ensemble_report(
    teachers: list[TeacherOutputs], val_y: np.ndarray, cfg: DistillConfig
) -> dict[str, Any]:
    """Each teacher's validation accuracy, ensemble weight, and agreement with the ensemble.

    Weights are `teacher_weights` when given, else the validation accuracies (normalised)
    for `weighted_probs`, uniform otherwise. Agreement is the share of validation rows
    where a teacher's top class is the ensemble's.
    """
    logits = [torch.from_numpy(t.val_logits.astype(np.float32)) for t in teachers]
    accs = [float((z.argmax(-1).numpy() == val_y).mean()) if len(val_y) else 0.0 for z in logits]
    if cfg.teacher_weights:
        weights = [w / sum(cfg.teacher_weights) for w in cfg.teacher_weights]
    elif cfg.ensemble == "weighted_probs" and sum(accs) > 0:
        weights = [a / sum(accs) for a in accs]
    else:
        weights = [1.0 / len(teachers)] * len(teachers)
    ensemble = soft_targets(logits, cfg.temperature, cfg.ensemble, weights).argmax(-1)
    agreement = [float((z.argmax(-1) == ensemble).float().mean()) for z in logits]
    return {
        "mode": cfg.ensemble,
        "weights": weights,
        "teacher_val_accuracy": accs,
        "agreement": agreement,
        "val_accuracy": float((ensemble.numpy() == val_y).mean()) if len(val_y) else 0.0,
    }


# ------------------------------------------------------------------------ worker loop


def _build_role(
    cfg: dict[str, Any], meta: DatasetMeta, plan: hints.Plan | None = None
) -> dict[str, Any]:
    """A role's model, optimizer and schedule. With a hint `plan` the trained module is a
    `HintedStudent`: its projections share the optimizer, `classifier` is what is saved."""
    classifier = build_classifier(
        parse_spec(cfg["student"]), meta.input_shape, meta.n_classes, meta.n_features
    )
    classifier.set_normalisation(torch.tensor(cfg["mean"]), torch.tensor(cfg["std"]))
    model: nn.Module = classifier if plan is None else hints.HintedStudent(classifier, plan)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["epochs"])
    return {
        "model": model,
        "classifier": classifier,
        "aux": model.projections if isinstance(model, hints.HintedStudent) else None,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "best_acc": -1.0,
    }


def _shard_targets(cfg: dict[str, Any], start: int, stop: int, n_classes: int) -> Targets:
    """This shard's ensemble soft targets from the cache: one ranged read per teacher."""
    parts = []
    for uri in cfg["caches"]:
        entry = teacher_cache.CacheEntry.open(uri)
        if entry is None:
            raise KdflowError(f"teacher cache {uri} disappeared during the run")
        parts.append({k: torch.from_numpy(v) for k, v in entry.train_rows(start, stop).items()})
    return ensemble_targets(
        parts,
        n_classes,
        cfg["temperature"],
        cfg["ensemble"],
        cfg["weights"],
        separate=cfg["multi_teacher"] == "separate",
    )


def _batches(
    x: torch.Tensor,
    y: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    device: torch.device,
    targets: Targets | None = None,
    teachers: list[Classifier] | None = None,
    ensemble: dict[str, Any] | None = None,
    entropy_sink: list[torch.Tensor] | None = None,
    taps: hints.TeacherTaps | None = None,
    noise: tuple[torch.Tensor, torch.Generator] | None = None,
) -> Any:
    """(x, y) or (x, y, soft targets) batches in `order`.

    Rows are gathered BLOCK_BATCHES batches at a time and then sliced: one large gather
    costs about what one small one does, and a slice is a view. On GPU each block goes
    through pinned memory in one copy. Online mode runs the teachers on each batch under
    no_grad; their logits go through the float16 (and top-k) rounding the cache applies,
    so both modes see the same targets. `entropy_sink` collects Σ H(p_T) of the rows.
    With `taps` (feature/attention distillation, online only) a fourth item carries the
    hint teacher's pooled features and attention maps from that same forward pass.
    `noise` (per-feature scale, generator) adds Gaussian noise to each batch's inputs
    before anything sees them; the same generator seed gives every role the same rows.
    """
    pin = device.type == "cuda"
    for start in range(0, len(order), batch_size * BLOCK_BATCHES):
        idx = order[start : start + batch_size * BLOCK_BATCHES]
        block = [x[idx], y[idx]]
        if targets is not None:
            block.append(targets.rows(idx))
            if entropy_sink is not None and targets.entropy is not None:
                entropy_sink.append(targets.entropy[idx].sum())
        if pin:
            block = [t.pin_memory().to(device, non_blocking=True) for t in block]
        for i in range(0, len(idx), batch_size):
            batch: list[Any] = [t[i : i + batch_size] for t in block]
            if noise is not None:
                scale, generator = noise
                draw = torch.randn(batch[0].shape, generator=generator)
                batch[0] = batch[0] + (draw * scale).to(batch[0].device)
            if teachers is not None:
                assert ensemble is not None
                with torch.no_grad():
                    parts = [
                        teacher_parts(t(batch[0]).float(), ensemble["top_k"]) for t in teachers
                    ]
                    soft = ensemble_targets(
                        parts,
                        ensemble["n_classes"],
                        ensemble["temperature"],
                        ensemble["ensemble"],
                        ensemble["weights"],
                        separate=ensemble.get("multi_teacher") == "separate",
                    )
                batch.append(soft.rows())
                if entropy_sink is not None and soft.entropy is not None:
                    entropy_sink.append(soft.entropy.sum())
                if taps is not None:
                    batch.append(taps.take())
            yield batch


def _epoch(
    model: nn.Module,
    batches: Any,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    temperature: float,
    alpha: float,
    plan: hints.Plan | None = None,
) -> tuple[float, float, float, int, dict[str, float]]:
    """One pass; the row means of (loss, hard part, soft cross-entropy), the rows seen, and
    the means of the hint losses (`feature_loss`, `attention_loss`) when `plan` has any.

    The loss is `kd_objective` (KD's gradient without the constant teacher entropy), plus
    feature_weight · `hint_loss` and attention_weight · `attention_loss` with a plan.
    Losses stay on the device until the end of the epoch: a `.item()` per step would
    stall a GPU on every batch.
    """
    model.train()
    losses: tuple[list[torch.Tensor], ...] = ([], [], [], [], [])
    unreported: list[tuple[torch.Tensor, torch.Tensor]] = []
    sizes: list[int] = []
    cuda = device.type == "cuda"
    for batch in batches:
        if cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(batch[0])
        else:
            out = model(batch[0])
        logits, features, maps = out if isinstance(out, tuple) else (out, [], [])
        logits = logits.float()
        soft = batch[2] if len(batch) > 2 else None
        loss, hard, soft_ce = kd_objective(
            logits, batch[1], soft, temperature, alpha, report_hard=False
        )
        if plan is not None:
            taps = batch[3]
            if plan.pairs:
                feature = hint_loss(features, taps["features"])
                loss = loss + plan.feature_weight * feature
                losses[3].append(feature.detach())
            if plan.attention_map:
                attention = attention_loss(maps, taps["attention"])
                loss = loss + plan.attention_weight * attention
                losses[4].append(attention.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[0].append(loss.detach())
        if hard is None:  # pure KD: the reported CE is computed for the epoch at once
            unreported.append((logits.detach(), batch[1]))
        else:
            losses[1].append(hard)
        losses[2].append(soft_ce)
        sizes.append(len(batch[1]))
    if not sizes:
        return 0.0, 0.0, 0.0, 0, {}
    weights = torch.tensor(sizes, dtype=torch.float32, device=losses[0][0].device)
    means = [
        float((torch.stack(v).float() * weights).sum() / weights.sum()) if v else 0.0
        for v in losses
    ]
    if unreported:
        with torch.no_grad():
            means[1] = float(
                F.cross_entropy(
                    torch.cat([z for z, _ in unreported]).float(),
                    torch.cat([y for _, y in unreported]),
                )
            )
    aux = {}
    if losses[3]:
        aux["feature_loss"] = means[3]
    if losses[4]:
        aux["attention_loss"] = means[4]
    return means[0], means[1], means[2], sum(sizes), aux


def _train_worker(cfg: dict[str, Any]) -> None:
    """Ray Train per-worker loop; every rank runs it, rank 0 writes the checkpoints.

    It trains each role side by side, from the same initial weights and on the same
    batches: `student` on the KD loss against the ensemble's soft targets, `baseline` on
    the hard labels alone. The comparison then isolates what distillation adds.
    """
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    meta = DatasetMeta(**cfg["meta"])
    rows = int(meta.rows["train"])
    start, stop = shard_bounds(rows, rank, world)
    train = load_rows(cfg["dataset"], "train", meta, start, stop)
    val = load_rows(cfg["dataset"], "val", meta) if rank == 0 else None
    # In-process there is no worker whose resources Ray assigned: the process's own device,
    # and threads within the process's CPU budget (a pod's CPU limit).
    in_process = cfg["in_process"]
    if in_process:
        limit_threads()
    device = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if in_process
        else ray.train.torch.get_device()
    )
    online = cfg["teacher_mode"] == "online" and "student" in cfg["roles"]
    targets = (
        _shard_targets(cfg, start, stop, meta.n_classes)
        if cfg["teacher_mode"] == "offline" and "student" in cfg["roles"]
        else None
    )
    teachers = (
        [_load_teacher(u, meta)[0].to(device).eval() for u in cfg["teachers"]] if online else None
    )
    ensemble = {
        k: cfg[k] for k in ("top_k", "temperature", "ensemble", "weights", "multi_teacher")
    } | {"n_classes": meta.n_classes}
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    settings = hints.Settings(**cfg["hints"])
    plan: hints.Plan | None = None
    taps: hints.TeacherTaps | None = None
    roles: dict[str, dict[str, Any]] = {}
    for role in cfg["roles"]:
        # Same seed for every role and rank: identical initial weights (DDP broadcasts
        # rank 0's anyway), so baseline and student differ only by the loss. The student's
        # projections are drawn after its weights, so they do not change them.
        seed_everything(cfg["seed"])
        if role == "student" and settings.active and teachers:
            student = build_classifier(
                parse_spec(cfg["student"]), meta.input_shape, meta.n_classes, meta.n_features
            ).to(device)
            teacher = teachers[settings.hint_teacher]
            plan = hints.make_plan(settings, teacher, student)
            taps = hints.TeacherTaps(teacher, plan)
            seed_everything(cfg["seed"])
        roles[role] = _build_role(cfg, meta, plan if role == "student" else None)
    first_epoch, history = 1, []

    checkpoint = ray.train.get_checkpoint() or (
        _latest_in_process_checkpoint(cfg["run_dir"]) if in_process else None
    )
    if checkpoint:
        with checkpoint.as_directory() as folder:
            tensors, state = load_tensors(Path(folder))
        # Weights before prepare_model (the DDP wrapper would prefix every key with
        # "module."), optimizer state after it (Adam's moments follow the parameters' device).
        for role, r in roles.items():
            r["classifier"].load_state_dict(_strip(tensors, f"{role}.model."))
            if r["aux"] is not None:
                r["aux"].load_state_dict(_strip(tensors, f"{role}.aux."))
        first_epoch, history = state["epoch"] + 1, state["history"]
        log.info("rank %d resumes at epoch %d", rank, first_epoch)

    for r in roles.values():
        # One process needs no DDP wrapper, only the device.
        r["model"] = (
            r["model"].to(device) if in_process else ray.train.torch.prepare_model(r["model"])
        )
        # The classifier alone is validated and saved (a HintedStudent's projections are
        # checkpointed apart, as `aux`).
        r["plain"] = r["classifier"]
    if checkpoint:
        for role, r in roles.items():
            r["optimizer"].load_state_dict(
                unflatten_optimizer_state(_strip(tensors, f"{role}."), state[role]["optimizer"])
            )
            r["scheduler"].load_state_dict(state[role]["scheduler"])
            r["best_acc"] = state[role]["best_val_accuracy"]
        _set_rng_state(_strip(tensors, "rng."), state["rng"])
    # Input noise (--augment-noise), in each feature's standard deviations.
    noise_scale = cfg.get("augment_noise", 0.0) * torch.tensor(cfg["std"])
    batch_size = max(1, cfg["batch_size"] // world)
    per_rank = math.ceil(rows / world)
    for epoch in range(first_epoch, cfg["epochs"] + 1):
        order = epoch_order(len(x), per_rank, cfg["seed"] * 100_003 + epoch)
        stats: dict[str, Any] = {"epoch": epoch}
        for role, r in roles.items():
            kd = role == "student"
            noise = None
            if cfg.get("augment_noise"):
                # A fresh generator per role: both roles see the same noisy rows.
                seed = cfg["seed"] * 100_003 + epoch * 1_009 + rank
                noise = (noise_scale, torch.Generator().manual_seed(seed))
            entropies: list[torch.Tensor] = []
            batches = _batches(
                x,
                y,
                order,
                batch_size,
                device,
                targets=targets if kd else None,
                teachers=teachers if kd else None,
                ensemble=ensemble,
                entropy_sink=entropies,
                taps=taps if kd else None,
                noise=noise,
            )
            alpha = cfg["alpha"] if kd else 1.0
            started = time.perf_counter()
            loss, hard, soft_ce, seen, aux = _epoch(
                r["model"],
                batches,
                r["optimizer"],
                device,
                cfg["temperature"],
                alpha,
                plan if kd else None,
            )
            seconds = time.perf_counter() - started
            r["scheduler"].step()
            # Report what kd_loss reports: the KL, and the loss with the teachers' entropy.
            mean_entropy = float(torch.stack(entropies).sum()) / seen if entropies else 0.0
            soft_part = soft_ce - mean_entropy if alpha < 1.0 else 0.0
            loss -= (1.0 - alpha) * cfg["temperature"] ** 2 * mean_entropy
            stats |= {
                f"{role}/loss": loss,
                f"{role}/hard_loss": hard,
                f"{role}/soft_loss": soft_part,
                f"{role}/seconds": seconds,
                f"{role}/rows_per_s": seen * world / seconds,
            } | {f"{role}/{k}": v for k, v in aux.items()}
            if val is not None:
                val_acc = accuracy(r["plain"], val)
                r["best_acc"] = max(r["best_acc"], val_acc)
                stats |= {
                    f"{role}/val_accuracy": val_acc,
                    f"{role}/best_val_accuracy": r["best_acc"],
                }
        history.append(stats)
        if in_process:
            ray.train.report(
                stats, checkpoint=_persist_checkpoint(cfg["run_dir"], roles, epoch, history)
            )
        else:
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if rank == 0:
                    _save_checkpoint(Path(tmp), roles, epoch, history)
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(stats, checkpoint=ckpt)
        if cfg.get("fail_at_epoch") == epoch and not checkpoint:
            if in_process:
                raise KdflowError(f"fault injected after epoch {epoch} (test hook)")
            _die_once_checkpointed(cfg["run_dir"], epoch)
    if in_process and checkpoint and first_epoch > cfg["epochs"]:
        # A rerun of a finished run: nothing left to train, hand back its last checkpoint.
        ray.train.report(history[-1], checkpoint=checkpoint)


IN_PROCESS_LATEST = "in_process_latest.json"
"""Under a run's folder: which checkpoint of an in-process run is the latest (written last)."""


def _persist_checkpoint(
    run_dir: str, roles: dict[str, dict[str, Any]], epoch: int, history: list[dict[str, Any]]
) -> Any:
    """An in-process run's checkpoint, written where Ray Train would write it.

    Ray Train's local mode keeps only a reference to what is reported, so the loop writes
    the folder itself (local or S3), then the pointer to it, then drops the checkpoint two
    epochs back: a crash at any point leaves a complete latest checkpoint to resume from.
    """
    folder = storage.join(run_dir, f"checkpoint_epoch_{epoch:06d}")
    with storage.writing_dir(folder) as local:
        _save_checkpoint(local, roles, epoch, history)
    storage.write_json(
        storage.join(run_dir, IN_PROCESS_LATEST),
        {"epoch": epoch, "path": folder, "metrics": history[-1]},
    )
    if epoch > 2:  # deleting what is not there is a no-op
        storage.delete(storage.join(run_dir, f"checkpoint_epoch_{epoch - 2:06d}"))
    return _checkpoint_at(folder)


def _latest_in_process_checkpoint(run_dir: str) -> Any:
    """The checkpoint an in-process run of this name left, or None."""
    pointer = storage.join(run_dir, IN_PROCESS_LATEST)
    if not storage.exists(pointer):
        return None
    latest = storage.read_json(pointer)
    log.info("resuming the in-process run from epoch %d: %s", latest["epoch"], latest["path"])
    return _checkpoint_at(latest["path"])


def _checkpoint_at(uri: str) -> Any:
    """A Ray Train `Checkpoint` for a folder or s3:// prefix."""
    import ray.train

    path, fs = storage.ray_storage(uri)
    return ray.train.Checkpoint(path, filesystem=fs)


def _die_once_checkpointed(run_dir: str, epoch: int, timeout_s: float = 60.0) -> None:
    """Fault injection for the resume tests: kill this worker process once the controller
    has recorded this epoch's checkpoint (it collects reports on its health-check tick, so
    dying right after `report` could lose the checkpoint and retrain the epoch)."""
    snapshot = storage.join(run_dir, "checkpoint_manager_snapshot.json")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if storage.exists(snapshot):
            latest = storage.read_json(snapshot).get("latest_checkpoint_result") or {}
            if latest.get("metrics", {}).get("epoch") == epoch:
                break
        time.sleep(0.1)
    os._exit(1)


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch, CUDA, numpy and Python RNG states, as tensors plus JSON.

    Every rank seeds identically and draws the same amounts, so rank 0's state is every
    rank's; dropout is the only consumer in the loop (batch order has its own generator).
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    tensors = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.asarray(keys).astype(np.int64)),
    }
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    version, internal, python_gauss = random.getstate()
    meta = {
        "numpy": [kind, int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), python_gauss],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, python_gauss = meta["python"]
    random.setstate((version, tuple(internal), python_gauss))


def _save_checkpoint(
    folder: Path, roles: dict[str, dict[str, Any]], epoch: int, history: list[dict[str, Any]]
) -> None:
    """Weights, optimizer, scheduler of every role, epoch and RNG, as safetensors + JSON."""
    rng_tensors, rng_meta = _rng_state()
    tensors: dict[str, torch.Tensor] = {f"rng.{k}": v for k, v in rng_tensors.items()}
    state: dict[str, Any] = {"epoch": epoch, "history": history, "rng": rng_meta}
    for role, r in roles.items():
        opt_tensors, opt_meta = flatten_optimizer_state(r["optimizer"].state_dict())
        tensors |= {f"{role}.model.{k}": v for k, v in r["classifier"].state_dict().items()}
        if r["aux"] is not None:
            tensors |= {f"{role}.aux.{k}": v for k, v in r["aux"].state_dict().items()}
        tensors |= {f"{role}.{k}": v for k, v in opt_tensors.items()}
        state[role] = {
            "optimizer": opt_meta,
            "scheduler": r["scheduler"].state_dict(),
            "best_val_accuracy": r["best_acc"],
        }
    save_tensors(tensors, state, folder)


# ------------------------------------------------------------------------------ driver


def ensure_ray(num_cpus: int | None = None) -> None:
    """Start an in-process Ray unless one is running or RAY_ADDRESS points at a cluster."""
    import ray

    # Ray Train V2's controller collects each report on its health-check tick (2 s by
    # default): with a checkpoint every epoch that tick, not compute, paces small runs.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    # Socket paths must stay under 107 characters: keep Ray's temp dir short.
    temp = os.environ.get("KDFLOW_RAY_TMP") or tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(
        num_cpus=num_cpus or max(2, cpu_budget()),
        include_dashboard=False,
        _temp_dir=temp,
        log_to_driver=True,
        configure_logging=False,
    )


def train_students(
    dataset_uri: str,
    cfg: DistillConfig,
    loop: dict[str, Any],
    outputs: dict[str, str],
    storage_root: str,
    run_name: str,
    seed: int,
    fail_at_epoch: int | None = None,
) -> dict[str, StudentResult]:
    """One Ray Train run that trains the distilled student and the baseline side by side.

    `loop` carries what the workers need besides the config: the dataset's meta, the cache
    entries (offline) or teacher folders (online), the ensemble weights, the feature
    statistics. `outputs` maps each role to the folder (or s3:// prefix) it is saved to.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    in_process = cfg.workers == 0
    use_gpu = not in_process and ray.cluster_resources().get("GPU", 0) > 0
    storage_path, filesystem = storage.ray_storage(storage.join(storage_root, "ray"))
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            **loop,
            "dataset": dataset_uri,
            "roles": list(outputs),
            "student": cfg.student,
            "lr": cfg.student_lr,
            "epochs": cfg.student_epochs,
            "batch_size": cfg.student_batch_size,
            "temperature": cfg.temperature,
            "alpha": cfg.alpha,
            "ensemble": cfg.ensemble,
            "teacher_mode": cfg.teacher_mode,
            "augment_noise": cfg.augment_noise,
            "multi_teacher": cfg.multi_teacher,
            "hints": asdict(hint_settings(cfg)),
            "seed": seed,
            "fail_at_epoch": fail_at_epoch,
            "run_dir": storage.join(storage_root, "ray", run_name),
            "in_process": in_process,
        },
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; say which run failed and why
        raise KdflowError(f"Ray Train run {run_name} failed: {exc}") from exc
    if result.checkpoint is None:
        raise KdflowError(f"Ray Train run {run_name} finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        tensors, state = load_tensors(Path(folder))
    meta = DatasetMeta(**loop["meta"])
    results = {}
    for role, out in outputs.items():
        model = build_classifier(
            parse_spec(cfg.student), meta.input_shape, meta.n_classes, meta.n_features
        )
        # The last epoch, not the best validation epoch: the validation split is small
        # (~130 rows on digits) and picking on it adds noise that hides what KD buys.
        model.load_state_dict(_strip(tensors, f"{role}.model."))
        _save_output(model, out, meta, role)
        results[role] = StudentResult(
            val_accuracy=float(state["history"][-1][f"{role}/val_accuracy"]),
            params=count_params(model),
            epochs=int(state["epoch"]),
            history=[
                {k.split("/", 1)[1]: v for k, v in h.items() if k.startswith(role + "/")}
                | {"epoch": h["epoch"]}
                for h in state["history"]
            ],
        )
    return results


def _save_output(model: Classifier, uri: str, meta: DatasetMeta, role: str) -> None:
    with storage.writing_dir(uri) as folder:
        save_model(model, folder, meta.classes, meta.feature_columns, {"role": role})


def hint_settings(cfg: DistillConfig) -> hints.Settings:
    return hints.Settings(
        cfg.feature_weight, list(cfg.feature_layers), cfg.attention_weight, cfg.hint_teacher
    )


def check_teacher_settings(cfg: DistillConfig, teacher_uris: list[str], meta: DatasetMeta) -> None:
    """Settings that depend on the teachers, checked on the driver before Ray Train starts:
    the weight count, the hint teacher, and the hint layers (one dummy forward pass)."""
    if cfg.teacher_weights and len(cfg.teacher_weights) != len(teacher_uris):
        raise ConfigError(
            f"--teacher-weights: {len(cfg.teacher_weights)} weights for "
            f"{len(teacher_uris)} teachers; give one per teacher, in --teachers order",
            option="--teacher-weights",
        )
    settings = hint_settings(cfg)
    if not settings.active:
        return
    if settings.hint_teacher >= len(teacher_uris):
        raise ConfigError(
            f"--hint-teacher: {settings.hint_teacher} but there are {len(teacher_uris)} "
            "teachers (0-based)",
            option="--hint-teacher",
        )
    teacher, _ = _load_teacher(teacher_uris[settings.hint_teacher], meta)
    student = build_classifier(
        parse_spec(cfg.student), meta.input_shape, meta.n_classes, meta.n_features
    )
    hints.make_plan(settings, teacher, student)


def _distill_once(
    dataset_uri: str,
    teacher_uris: list[str],
    cfg: DistillConfig,
    outputs: dict[str, str],
    storage_root: str,
    run_name: str,
    seed: int,
    meta: DatasetMeta,
    fail_at_epoch: int | None,
    val_y: np.ndarray,
    stats: tuple[list[float], list[float]],
) -> tuple[dict[str, StudentResult], list[TeacherOutputs], dict[str, Any], dict[str, float]]:
    """Teacher outputs (cached or not), then one Ray Train run of the roles in `outputs`.

    `val_y` (the validation labels) and `stats` (`feature_stats`) are the run's, read once
    for every born-again generation."""
    started = time.monotonic()
    top_k = cfg.top_k if 0 < cfg.top_k < meta.n_classes else 0
    if cfg.top_k and not top_k:
        log.info("--top-k %d >= %d classes: caching full logits", cfg.top_k, meta.n_classes)
    teachers = teacher_outputs(dataset_uri, teacher_uris, meta, cfg, storage_root, top_k)
    teachers_done = time.monotonic()
    report = ensemble_report(teachers, val_y, cfg)
    for i, t in enumerate(teachers):
        log.info(
            "teacher %d %s: val accuracy %.4f, weight %.3f, agreement with the ensemble %.4f%s",
            i,
            parse_spec(t.spec["model"]),
            report["teacher_val_accuracy"][i],
            report["weights"][i],
            report["agreement"][i],
            " (cached)" if t.cache_hit else "",
        )
    mean, std = stats
    loop = {
        "meta": asdict(meta),
        "caches": [t.cache for t in teachers],
        "teachers": [t.uri for t in teachers],
        "weights": report["weights"],
        "top_k": top_k,
        "mean": mean,
        "std": std,
    }
    results = train_students(
        dataset_uri, cfg, loop, outputs, storage_root, run_name, seed, fail_at_epoch
    )
    seconds = {
        "teachers": teachers_done - started,
        "training": time.monotonic() - teachers_done,
    }
    return results, teachers, report, seconds


def run_distillation(
    dataset_uri: str,
    teacher_uris: list[str],
    cfg: DistillConfig,
    outputs: dict[str, str],
    storage_root: str,
    run_name: str,
    seed: int,
    fail_at_epoch: int | None = None,
) -> dict[str, Any]:
    """Teacher outputs (cached or not), then the Ray Train run; inputs and outputs are URIs.

    The same function runs in-process (local mode) and as the entry point of a Ray job on
    a cluster (`kdflow.distill.cluster`). Returns each role's result, the teachers' cache use, the
    ensemble's weights and agreement, and where the time went.

    With `generations` > 1 (born-again networks, Furlanello et al. 2018), generation 1 is
    the distilled student above; each later generation is a fresh student of the same
    architecture (seed + k − 1) distilled by logits from generation k − 1 alone, through
    the same loop. The hint losses apply to generation 1 only (they pair layers of the
    original teacher). The last generation is the student; the baseline trains once.
    """
    started = time.monotonic()
    if cfg.workers:  # in-process runs start Ray only if a teacher cache must be filled
        ensure_ray(num_cpus=max(cfg.workers, cpu_budget()))
    ray_started = time.monotonic()
    meta = load_meta(dataset_uri)
    rows = int(meta.rows["train"])
    if rows < cfg.workers:
        raise KdflowError(f"--workers {cfg.workers}: more workers than training rows ({rows})")
    check_teacher_settings(cfg, teacher_uris, meta)
    born_again = storage.join(storage_root, "born-again", run_name)
    first = dict(outputs)
    if cfg.generations > 1:
        first["student"] = storage.join(born_again, "gen-1")
    val_y = load_rows(dataset_uri, "val", meta).y
    stats = feature_stats(dataset_uri, meta)
    results, teachers, report, seconds = _distill_once(
        dataset_uri,
        teacher_uris,
        cfg,
        first,
        storage_root,
        run_name,
        seed,
        meta,
        fail_at_epoch,
        val_y,
        stats,
    )
    generations = [
        {"generation": 1, "val_accuracy": results["student"].val_accuracy, "teacher": "ensemble"}
    ]
    later = replace(
        cfg,
        teacher_weights=[],
        multi_teacher="average",
        ensemble="mean_probs",
        feature_weight=0.0,
        feature_layers=[],
        attention_weight=0.0,
    )
    for k in range(2, cfg.generations + 1):
        previous = first["student"] if k == 2 else storage.join(born_again, f"gen-{k - 1}")
        out = outputs["student"] if k == cfg.generations else storage.join(born_again, f"gen-{k}")
        gen_results, _, _, gen_seconds = _distill_once(
            dataset_uri,
            [previous],
            later,
            {"student": out},
            storage_root,
            f"{run_name}-gen{k}",
            seed + k - 1,
            meta,
            None,
            val_y,
            stats,
        )
        results["student"] = gen_results["student"]
        seconds = {key: seconds[key] + gen_seconds[key] for key in seconds}
        generations.append(
            {
                "generation": k,
                "val_accuracy": gen_results["student"].val_accuracy,
                "teacher": f"generation {k - 1}",
            }
        )
        log.info("born-again generation %d: val accuracy %.4f", k, generations[-1]["val_accuracy"])
    finished = time.monotonic()
    return {
        **{role: asdict(r) for role, r in results.items()},
        "teachers": [
            {
                "spec": str(parse_spec(t.spec["model"])),
                "val_accuracy": report["teacher_val_accuracy"][i],
                "weight": report["weights"][i],
                "agreement": report["agreement"][i],
                "cache": t.cache,
                "cache_hit": t.cache_hit,
                "seconds": t.seconds,
            }
            for i, t in enumerate(teachers)
        ],
        "ensemble": {"mode": report["mode"], "val_accuracy": report["val_accuracy"]},
        "generations": generations,
        "seconds": {
            "ray_start": ray_started - started,
            "teachers": seconds["teachers"],
            "training": seconds["training"],
            "total": finished - started,
        },
    }


def distill(
    dataset_dir: Path,
    teacher_dirs: list[Path],
    cfg: DistillConfig,
    student_dir: Path,
    baseline_dir: Path,
    work_dir: Path,
    run_name: str,
    seed: int,
    fail_at_epoch: int | None = None,
) -> dict[str, Any]:
    """The distill step: in-process Ray, or a Ray job on `cfg.ray_address`.

    Checkpoints and the teacher cache go to `cfg.storage_path`, or to `work_dir` when it is
    not set (then nothing is shared between runs).
    """
    outputs = {"student": str(student_dir), "baseline": str(baseline_dir)}
    if cfg.ray_address:
        from kdflow.distill.cluster import submit_distillation

        return submit_distillation(
            str(dataset_dir),
            [str(t) for t in teacher_dirs],
            cfg,
            outputs,
            run_name,
            seed,
            fail_at_epoch=fail_at_epoch,
        )
    return run_distillation(
        str(dataset_dir),
        [str(t) for t in teacher_dirs],
        cfg,
        outputs,
        cfg.storage_path or str(work_dir),
        run_name,
        seed,
        fail_at_epoch,
    )
