"""Teachers: their saved folders, and their outputs over the data, computed once.

Offline KD fills each classifier teacher's cache entry (`kdflow.distill.cache`) by Ray Data
batch inference (`kdflow.distill.cache_fill`): `TeacherPredictor` on an actor pool per
teacher, a GPU each where the cluster has GPUs, the teachers one after the other, each with
the whole pool. A causal LM's entry is still filled in one Ray task per teacher. A later
run with the same data and teacher reuses the entry. Either mode reads each teacher's
validation logits for the ensemble's weights (a Ray task per teacher, before the fills).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from kdflow.config import DistillConfig
from kdflow.data import storage
from kdflow.data.prepared import DatasetMeta
from kdflow.data.sources import open_source
from kdflow.distill import cache as teacher_cache
from kdflow.distill import cache_fill
from kdflow.distill.runtime import ensure_ray, local_device, wants_gpus
from kdflow.distill.tasks import Task, task_named
from kdflow.errors import DataError, KdflowError, ModelFormatError
from kdflow.models.inference import as_tensor, predict_logits
from kdflow.models.sources import encoder_of, load_saved
from kdflow.models.zoo import describe

log = logging.getLogger(__name__)


def load_teacher(uri: str, meta: DatasetMeta) -> tuple[nn.Module, dict[str, Any]]:
    """A teacher's saved folder (local or s3://), loaded by its source, checked against
    the data's inputs and classes."""
    with storage.local_dir(uri) as folder:
        model, spec = load_saved(folder)
    reads_text = encoder_of(model) is not None
    reads = "text" if reads_text else "image" if spec.get("inputs") == "image" else "columns"
    if spec.get("inputs") == "corpus":
        reads, reads_text = "corpus", False
    if reads != meta.kind:
        names = {"text": "text (a classifier)", "image": "images", "columns": "numeric columns",
                 "corpus": "a corpus (a causal LM)"}
        raise KdflowError(
            f"teacher {uri} ({spec.get('source') or describe(spec)}) reads "
            f"{names[reads]}; the data is {names.get(meta.kind, meta.kind)}"
        )
    if reads_text and len(spec.get("text_columns", [])) != len(meta.text_columns):
        raise KdflowError(
            f"teacher {uri} reads {len(spec.get('text_columns', []))} text column(s) per row; "
            f"the data has {len(meta.text_columns)} ({', '.join(meta.text_columns)})"
        )
    if spec["n_features"] != meta.n_features or spec["n_classes"] != meta.n_classes:
        raise KdflowError(
            f"teacher {uri} expects {spec['n_features']} features and {spec['n_classes']} "
            f"classes; the data has {meta.n_features} and {meta.n_classes}"
        )
    return model, spec


def _teacher_task(
    dataset_uri: str,
    teacher_uri: str,
    task_name: str,
    cache_uri: str | None,
    entry_meta: dict[str, Any],
    token_cache: str | None = None,
    cfg: DistillConfig | None = None,
) -> dict[str, Any]:
    """One teacher's validation logits and, given `cache_uri`, its entry filled here.

    Runs as a Ray task (a GPU when the cluster has them) for the validation logits, and for
    a causal LM's entry too; in-process runs (`workers=0`) call it for everything. The
    train split streams through in blocks, so memory is a block (a causal LM's: its entry).
    """
    started = time.monotonic()
    source = open_source(dataset_uri, cache_root=token_cache)
    task = task_named(task_name, cfg)
    model = TeacherPredictor.load(teacher_uri, source.meta)
    encoder = encoder_of(model)  # each teacher reads the text through its own tokenizer
    val = source.read("val", encoder=encoder)
    if task.name == "causal-lm":  # per-token logits are too many to keep: the metrics
        from kdflow.distill.lm_task import token_metrics

        metrics = token_metrics(model, val)
        val_logits = np.array([metrics["token_accuracy"], -metrics["log_likelihood"]], np.float32)
    else:
        val_logits = predict_logits(model, val.x).half().numpy()
    if cache_uri and teacher_cache.is_sharded(cache_uri):
        predictor = TeacherPredictor(teacher_uri, source.meta, task_name,
                                     int(entry_meta["top_k"]), cfg, model=model)
        shards = cache_fill.fill_here(
            dataset_uri, cache_fill.input_columns(source.meta), predictor,
            teacher_cache.fill_folder(cache_uri), int(entry_meta["rows"]),
            _progress_label(teacher_uri),
        )
        teacher_cache.commit_sharded(cache_uri, val_logits, entry_meta, shards)
    elif cache_uri:
        top_k = int(entry_meta["top_k"])
        rows = int(entry_meta["rows"])
        arrays: dict[str, np.ndarray] = {}
        done = 0
        for x in source.stream("train", task.stream_rows, encoder=encoder):
            parts = _teacher_parts(task, model, x, top_k)
            for name, t in parts.items():
                if name not in arrays:
                    arrays[name] = np.empty((rows, *t.shape[1:]), t.numpy().dtype)
                arrays[name][done : done + len(x)] = t.numpy()
            done += len(x)
        if done != rows:
            raise DataError(f"{dataset_uri}: train.parquet has {done} rows, meta.json says {rows}")
        teacher_cache.write_entry(cache_uri, arrays, val_logits, entry_meta)
    return {
        "val_logits": val_logits,
        "seconds": time.monotonic() - started,
        "tokenize_seconds": source.tokenize_seconds,
    }


def _progress_label(teacher_uri: str) -> str:
    return f"teacher cache {teacher_uri.rstrip('/').rsplit('/', 1)[-1]}"


class TeacherPredictor:
    """One teacher over blocks of train rows, loaded once per Ray Data actor: a block (its
    input columns and `row`) -> its shard (`row` and the cache's parts, as
    `_teacher_parts` computes them)."""

    def __init__(
        self,
        teacher_uri: str,
        meta: DatasetMeta,
        task_name: str,
        top_k: int,
        cfg: DistillConfig | None = None,
        threads: int = 0,
        model: nn.Module | None = None,
    ) -> None:
        if threads:  # a CPU actor's share: Ray gives it one CPU, torch would take them all
            torch.set_num_threads(threads)
        self.model = model if model is not None else self.load(teacher_uri, meta)
        self.meta, self.top_k = meta, top_k
        self.task = task_named(task_name, cfg)
        self.encoder = encoder_of(self.model)

    @staticmethod
    def load(teacher_uri: str, meta: DatasetMeta) -> nn.Module:
        """The teacher on this process's device; any failure is a KdflowError naming it
        (not a traceback from inside a Ray actor)."""
        try:
            model, _ = load_teacher(teacher_uri, meta)
        except KdflowError as exc:
            if teacher_uri in str(exc):
                raise
            raise type(exc)(f"teacher {teacher_uri}: {exc}") from exc
        except Exception as exc:  # safetensors', torch's: unreadable or mismatched weights
            raise ModelFormatError(
                f"teacher {teacher_uri}: its weights cannot be loaded "
                f"({type(exc).__name__}: {exc}); save it again with kdflow"
            ) from exc
        return model.to(local_device())

    def __call__(self, block: pa.Table) -> pa.Table:
        x = cache_fill.model_inputs(block, self.meta, self.encoder)
        parts = _teacher_parts(self.task, self.model, x, self.top_k)
        return teacher_cache.shard_table(
            block.column("row").to_numpy(), {name: t.numpy() for name, t in parts.items()}
        )


@torch.no_grad()
def _teacher_parts(task: Task, model: nn.Module, x: np.ndarray, top_k: int
                   ) -> dict[str, torch.Tensor]:
    """The cache's parts of a block of rows, `task.predict_rows` at a time."""
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(x), task.predict_rows):
        batch = as_tensor(x[start : start + task.predict_rows]).to(device)
        for name, t in task.teacher_parts(model, batch, top_k).items():
            parts.setdefault(name, []).append(t.cpu())
    return {name: torch.cat(ts) for name, ts in parts.items()}


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
    task: Task,
    rows: int | None = None,
) -> list[TeacherOutputs]:
    """Each teacher's validation logits; offline, also its cache entry, filled if missing.

    Cached teachers cost one read of their validation logits. The others run a Ray task
    each, in parallel, for their validation logits (a causal LM's fills its entry too);
    then their classifier entries are filled by Ray Data batch inference, a teacher at a
    time on an actor pool (`cache_actors`). In-process runs (`workers=0`) start no Ray and run
    everything here, one teacher after the other.
    Online mode writes no cache but reads validation logits from one. `rows` is the
    training split's rows as the models read them (a corpus's packed blocks; default the
    prepared split's rows). A causal LM's entry holds log-probabilities at the run's
    temperature, so the temperature is part of its key, and its `val` holds the
    validation token accuracy and mean negative log-likelihood per token (log perplexity)
    rather than logits.
    """
    offline = cfg.teacher_mode == "offline"
    key = teacher_cache.dataset_key(dataset_uri)
    outputs: dict[int, TeacherOutputs] = {}
    pending: dict[int, tuple[str, dict[str, Any], str, dict[str, Any]]] = {}
    for i, uri in enumerate(teacher_uris):
        spec = teacher_spec(uri)
        entry_meta = {
            "dataset_key": key,
            "teacher_sha256": spec["weights_sha256"],
            "top_k": top_k,
            "rows": int(meta.rows["train"]) if rows is None else rows,
            "classes": meta.n_classes,
        }
        suffix = ""
        if task.name == "causal-lm":
            entry_meta |= {"temperature": cfg.temperature, "task": task.name}
            suffix = f"-T{cfg.temperature:g}"
        cache = teacher_cache.entry_uri(storage_root, key, spec["weights_sha256"], top_k, suffix,
                                        sharded=task.name != "causal-lm")
        entry = teacher_cache.open_entry(cache)
        problem = entry.problem() if entry is not None and entry.matches(entry_meta) else None
        if problem:
            log.warning("teacher %d: cache entry %s is damaged (%s); filling it again",
                        i, cache, problem)
        elif entry is not None and entry.matches(entry_meta):
            log.info("teacher %d (%s): cached outputs %s", i, describe(spec), cache)
            outputs[i] = TeacherOutputs(
                uri, spec, entry.rows("val"), cache if offline else None, True, 0.0
            )
            continue
        pending[i] = (uri, spec, cache, entry_meta)
    done = []
    if pending and cfg.workers == 0:
        # In-process runs start no Ray: the teachers fill their caches here, one by one.
        done = [
            _teacher_task(
                dataset_uri, uri, task.name, cache if offline else None, entry_meta, storage_root,
                cfg,
            )
            for uri, _, cache, entry_meta in pending.values()
        ]
    elif pending:
        done = _with_ray(dataset_uri, pending, meta, cfg, storage_root, task, offline)
    for (i, (uri, spec, cache, _)), out in zip(pending.items(), done, strict=True):
        outputs[i] = TeacherOutputs(
            uri, spec, out["val_logits"], cache if offline else None, False, out["seconds"]
        )
    return [outputs[i] for i in range(len(teacher_uris))]


def cache_actors(cfg: DistillConfig, resources: dict[str, float]) -> tuple[int, bool]:
    """Actors per teacher filling the cache, and whether each takes a GPU: `cache_actors`
    when set, else one per GPU (at least one: `use_gpu on` on a cluster that has none
    yet), or on CPUs one per two CPUs (the other CPU of each pair reads, writes and runs
    the validation tasks)."""
    on_gpus = wants_gpus(cfg.use_gpu, resources)
    if cfg.cache_actors:
        return cfg.cache_actors, on_gpus
    if on_gpus:
        return max(1, int(resources.get("GPU", 0))), True
    return max(1, int(resources.get("CPU", 1)) // 2), False


def _with_ray(
    dataset_uri: str,
    pending: dict[int, tuple[str, dict[str, Any], str, dict[str, Any]]],
    meta: DatasetMeta,
    cfg: DistillConfig,
    storage_root: str,
    task: Task,
    offline: bool,
) -> list[dict[str, Any]]:
    """The pending teachers' validation logits (a Ray task each) and, offline, their
    entries: Ray Data fills for a classifier's, inside the task for a causal LM's."""
    import ray

    ensure_ray()
    started = time.monotonic()
    resources = ray.cluster_resources()
    gpus = 1 if wants_gpus(cfg.use_gpu, resources) else 0
    batch = offline and teacher_cache.is_sharded(next(iter(pending.values()))[2])
    remote = ray.remote(_teacher_task)
    refs = [
        remote.options(num_cpus=1, num_gpus=gpus, name=f"kdflow-teacher-{i}").remote(
            dataset_uri, uri, task.name, cache if offline and not batch else None, entry_meta,
            storage_root, cfg,
        )
        for i, (uri, _, cache, entry_meta) in pending.items()
    ]
    # First: a teacher that does not load fails here, as its own KdflowError (an actor's
    # failed __init__ reaches the driver as an ActorDiedError holding only its text).
    done: list[dict[str, Any]] = _ray_get(refs)
    if batch:
        actors, on_gpus = cache_actors(cfg, resources)
        for (i, (uri, _, cache, entry_meta)), out in zip(pending.items(), done, strict=True):
            log.info("teacher %d: filling its cache on %d %s actor(s)", i, actors,
                     "GPU" if on_gpus else "CPU")
            shards = _fill(dataset_uri, uri, meta, task, cache, entry_meta, cfg, actors, on_gpus)
            teacher_cache.commit_sharded(cache, out["val_logits"], entry_meta, shards)
            out["seconds"] = time.monotonic() - started
    return done


def _fill(
    dataset_uri: str, uri: str, meta: DatasetMeta, task: Task, cache: str,
    entry_meta: dict[str, Any], cfg: DistillConfig, actors: int, gpus: bool,
) -> list[dict[str, Any]]:
    """One teacher's shards by Ray Data; a failure inside Ray is the KdflowError it began as."""
    kwargs = {"teacher_uri": uri, "meta": meta, "task_name": task.name,
              "top_k": int(entry_meta["top_k"]), "cfg": cfg, "threads": 1}
    try:
        return cache_fill.fill_ray(
            dataset_uri, cache_fill.input_columns(meta), TeacherPredictor, kwargs,
            teacher_cache.fill_folder(cache), int(entry_meta["rows"]), actors, gpus,
            _progress_label(uri),
        )
    except Exception as exc:  # Ray (Data) wraps what failed in its actors and tasks
        error = cache_fill.raised_as(exc)
        if error is exc:
            raise
        if error is not None:
            raise error from exc
        raise KdflowError(
            f"teacher {uri}: filling its cache failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc


def teacher_spec(uri: str) -> dict[str, Any]:
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
