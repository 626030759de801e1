"""Teachers: their saved folders, and their outputs over the data, computed once.

Offline KD fills each teacher's cache entry (`kdflow.distill.cache`) in a Ray task of its
own (a GPU each where the cluster has GPUs); a later run with the same data and teacher
reuses it. Either mode reads each teacher's validation logits for the ensemble's weights.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from kdflow.config import DistillConfig
from kdflow.data import storage
from kdflow.data.prepared import DatasetMeta
from kdflow.data.sources import open_source
from kdflow.distill import cache as teacher_cache
from kdflow.distill.runtime import ensure_ray, local_device
from kdflow.distill.tasks import Task, task_named
from kdflow.errors import DataError, KdflowError
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
    """One teacher's validation logits and, for the cache, its outputs over the train split.

    Runs as a Ray task (a GPU when the cluster has them); the train split streams through
    its data source in batches, so memory is the cache entry plus one batch.
    """
    started = time.monotonic()
    source = open_source(dataset_uri, cache_root=token_cache)
    task = task_named(task_name, cfg)
    model, _ = load_teacher(teacher_uri, source.meta)
    model.to(local_device())
    encoder = encoder_of(model)  # each teacher reads the text through its own tokenizer
    val = source.read("val", encoder=encoder)
    if task.name == "causal-lm":  # per-token logits are too many to keep: the metrics
        from kdflow.distill.lm_task import token_metrics

        metrics = token_metrics(model, val)
        val_logits = np.array([metrics["token_accuracy"], -metrics["log_likelihood"]], np.float32)
    else:
        val_logits = predict_logits(model, val.x).half().numpy()
    if cache_uri:
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

    Cached teachers cost one read of their validation logits; the others run in parallel,
    one Ray task each (in-process runs, `workers=0`, run them here, one after the other).
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
        cache = teacher_cache.entry_uri(storage_root, key, spec["weights_sha256"], top_k, suffix)
        entry = teacher_cache.CacheEntry.open(cache)
        if entry is not None and entry.matches(entry_meta):
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
        import ray

        ensure_ray()
        gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        remote = ray.remote(_teacher_task)
        refs = [
            remote.options(num_cpus=1, num_gpus=gpus, name=f"kdflow-teacher-{i}").remote(
                dataset_uri, uri, task.name, cache if offline else None, entry_meta, storage_root,
                cfg,
            )
            for i, (uri, _, cache, entry_meta) in pending.items()
        ]
        done = _ray_get(refs)
    for (i, (uri, spec, cache, _)), out in zip(pending.items(), done, strict=True):
        outputs[i] = TeacherOutputs(
            uri, spec, out["val_logits"], cache if offline else None, False, out["seconds"]
        )
    return [outputs[i] for i in range(len(teacher_uris))]


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
