"""The distillation driver: teacher outputs (cached or not), then the loop under Ray Train,
once per born-again generation; and a teacher's own training through the same loop.

Offline KD (the default): each teacher's logits over the training split are computed once,
by Ray Data batch inference on an actor pool (`kdflow.distill.cache_fill`), and cached
as float16 (optionally top-k) under the storage path, keyed by the data and the teacher's
weights (`kdflow.distill.cache`); later runs reuse them. Online KD
(`teacher_mode="online"`) runs the teachers on every batch instead, which augmentation
and hints need. Both modes round the teachers' logits to float16 (and top-k)
the same way, so on the same data they train the same student.

The same `run_distillation` runs in the step's process and as the entry point of a Ray job
on a cluster (`kdflow.distill.cluster`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from torch import nn

from kdflow.config import DistillConfig, TeacherConfig
from kdflow.data import storage
from kdflow.data.prepared import DatasetMeta
from kdflow.data.sources import DataSource, open_source
from kdflow.distill import hints, stream
from kdflow.distill.lm_checks import lm_ensemble_report, lm_student_checks, lm_top_k
from kdflow.distill.loop import InProcess, WorkerJob, role_history, train
from kdflow.distill.ray_train import StudentResult, train_students
from kdflow.distill.runtime import cpu_budget, ensure_ray, limit_threads, local_device
from kdflow.distill.targets import Ensemble, ensemble_report
from kdflow.distill.tasks import Task, task_for, task_named
from kdflow.distill.teachers import TeacherOutputs, load_teacher, teacher_outputs
from kdflow.errors import ConfigError, KdflowError
from kdflow.models.sources import (
    PrepareContext,
    build,
    encoder_of,
    source_for,
    source_of_folder,
)
from kdflow.models.zoo import count_params, describe

log = logging.getLogger(__name__)


def prepare_template(
    spec: str,
    data: DataSource,
    uri: str,
    seed: int,
    teacher: str | None = None,
    option: str = "--student",
    trust_remote_code: bool = False,
    vocab_size: int = 0,
) -> str | None:
    """The initial model folder of `spec` at `uri`, written once here for every role and
    worker (`ModelSource.prepare`: a trained tokenizer, a teacher's layers); None for a
    source that builds from the spec alone."""
    source = source_for(spec)
    source.check(spec, option)
    context = PrepareContext(data, seed, teacher, trust_remote_code, option, vocab_size)
    with tempfile.TemporaryDirectory(prefix="kdflow-template-") as tmp:
        if not source.prepare(spec, context, Path(tmp)):
            return None
        storage.upload_dir(Path(tmp), uri)
    return uri


def check_teacher_settings(
    cfg: DistillConfig, teacher_uris: list[str], meta: DatasetMeta, template: str | None = None
) -> None:
    """Settings that depend on the teachers and the data, checked on the driver before Ray
    Train starts: the weight count, the hint teacher, and the hint layers (one dummy forward
    pass)."""
    views_apply(bool(cfg.augment_noise), "--augment-noise", meta.kind)
    views_apply(bool(cfg.augment), "--augment", meta.kind)
    if cfg.teacher_weights and len(cfg.teacher_weights) != len(teacher_uris):
        raise ConfigError(
            f"--teacher-weights: {len(cfg.teacher_weights)} weights for "
            f"{len(teacher_uris)} teachers; give one per teacher, in --teachers order",
            option="--teacher-weights",
        )
    online_text = cfg.teacher_mode == "online" and meta.kind == "text"
    if not (online_text or cfg.uses_hints):
        return
    if cfg.uses_hints and cfg.hint_teacher >= len(teacher_uris):
        raise ConfigError(
            f"--hint-teacher: {cfg.hint_teacher} but there are {len(teacher_uris)} "
            "teachers (0-based)",
            option="--hint-teacher",
        )
    with storage.optional_local_dir(template) as folder:
        student = build(cfg.student, meta, template=folder)
    # Online text teachers read the student's batches: one tokenizer for all, checked here
    # rather than in every worker; the hints need only the hint teacher.
    uris = teacher_uris if online_text else [teacher_uris[cfg.hint_teacher]]
    loaded = dict(zip(uris, (load_teacher(u, meta) for u in uris), strict=True))
    if online_text:
        same_inputs(student, [m for m, _ in loaded.values()], uris)
    if not cfg.uses_hints:
        return
    uri = teacher_uris[cfg.hint_teacher]
    teacher, saved = loaded[uri]
    hints.make_plan(
        cfg,
        teacher,  # type: ignore[arg-type]
        student,  # type: ignore[arg-type]
        source_of_folder(saved, uri),
        source_for(cfg.student),
    )


VIEWS = {
    "--augment-noise": ("columns", "Gaussian noise applies to numeric columns"),
    "--augment": ("image", "image augmentations apply to image data"),
    "--teacher-augment": ("image", "image augmentations apply to image data"),
}
"""Each option that makes training views: the kind of data it applies to, and why."""


def views_apply(given: bool, option: str, kind: str) -> None:
    """ConfigError when `option` is given for data of another kind than it applies to."""
    needed, what = VIEWS[option]
    if given and kind != needed:
        raise ConfigError(f"{option}: {what}; this data is {kind}", option=option)


def same_inputs(student: nn.Module, teachers: list[nn.Module], uris: list[str]) -> None:
    """Online teachers read the student's batch: their encoders (tokenizers) must match."""
    mine = encoder_of(student)
    for teacher, uri in zip(teachers, uris, strict=True):
        theirs = encoder_of(teacher)
        if (mine is None) != (theirs is None) or (
            mine is not None and theirs is not None and mine.fingerprint != theirs.fingerprint
        ):
            raise ConfigError(
                f"--teacher-mode online: teacher {uri} tokenizes text otherwise than the "
                "student; online teachers read the student's batches, so give a student that "
                "shares their tokenizer (hf-from-teacher:) or use --teacher-mode offline",
                option="--teacher-mode",
            )


def _distill_once(
    job: WorkerJob,
    teacher_uris: list[str],
    outputs: dict[str, str],
    storage_root: str,
    run_name: str,
    meta: DatasetMeta,
    val_y: Any,
    task: Task,
) -> tuple[dict[str, StudentResult], list[TeacherOutputs], dict[str, Any], dict[str, float]]:
    """Teacher outputs (cached or not), then one Ray Train run of the roles in `outputs`.

    `job` carries the run's settings, seed and feature statistics, read once for every
    born-again generation; this fills in what the teachers give (caches, ensemble)."""
    cfg = job.cfg
    started = time.monotonic()
    if task.name == "causal-lm":
        top_k, rows = lm_top_k(cfg, job.vocab_size), job.rows
    else:
        top_k, rows = (cfg.top_k if 0 < cfg.top_k < meta.n_classes else 0), None
        if cfg.top_k and not top_k:
            log.info("--top-k %d >= %d classes: caching full logits", cfg.top_k, meta.n_classes)
    teachers = teacher_outputs(
        job.dataset, teacher_uris, meta, cfg, storage_root, top_k, task, rows
    )
    teachers_done = time.monotonic()
    if task.name == "causal-lm":
        report = lm_ensemble_report([t.val_logits for t in teachers], cfg)
    else:
        report = ensemble_report([t.val_logits for t in teachers], val_y, cfg)
    for i, t in enumerate(teachers):
        agreement = report["agreement"][i]
        log.info(
            "teacher %d %s: val accuracy %.4f, weight %.3f%s%s",
            i,
            describe(t.spec),
            report["teacher_val_accuracy"][i],
            report["weights"][i],
            "" if agreement is None else f", agreement with the ensemble {agreement:.4f}",
            " (cached)" if t.cache_hit else "",
        )
    job = replace(
        job,
        roles=list(outputs),
        run_dir=storage.join(storage_root, "ray", run_name),
        ensemble=Ensemble.of(cfg, meta.n_classes, report["weights"], top_k),
        caches=[t.cache for t in teachers if t.cache],
        teachers=[t.uri for t in teachers],
    )
    results = train_students(job, outputs, run_name, storage_root)
    seconds = {"teachers": teachers_done - started, "training": time.monotonic() - teachers_done}
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

    Returns each role's result, the teachers' cache use, the ensemble's weights and
    agreement, and where the time went.

    With `generations` > 1 (born-again networks, Furlanello et al. 2018), generation 1 is
    the distilled student above; each later generation is a fresh student of the same
    architecture (seed + k − 1) distilled by logits from generation k − 1 alone, through
    the same loop. The hint losses apply to generation 1 only (they pair layers of the
    original teacher). The last generation is the student; the baseline trains once.
    """
    started = time.monotonic()
    if cfg.workers:  # in-process runs (workers=0) never start Ray
        ensure_ray(num_cpus=max(cfg.workers, cpu_budget()))
    ray_started = time.monotonic()
    source = open_source(dataset_uri, cache_root=storage_root)
    meta = source.meta
    template = prepare_template(
        cfg.student, source, storage.join(storage_root, "templates", run_name), seed,
        teacher=teacher_uris[0] if teacher_uris else None,
    )
    task = task_named(task_for(meta), cfg)
    stream.check_applies(cfg.stream_data, meta.kind, task.name)
    encoder, vocab_size = None, 0
    if task.name == "causal-lm":
        encoder, vocab_size = lm_student_checks(cfg, teacher_uris, meta, template)
    rows = source.rows("train", encoder)
    if rows < cfg.workers:
        raise KdflowError(f"--workers {cfg.workers}: more workers than training rows ({rows})")
    check_teacher_settings(cfg, teacher_uris, meta, template)
    born_again = storage.join(storage_root, "born-again", run_name)
    first = dict(outputs)
    if cfg.generations > 1:
        first["student"] = storage.join(born_again, "gen-1")
    val_y = source.labels("val", encoder=encoder)
    job = WorkerJob(
        cfg=cfg,
        dataset=dataset_uri,
        roles=list(first),
        seed=seed,
        run_dir="",
        in_process=cfg.workers == 0,
        task=task.name,
        stats=source.input_stats(),
        fail_at_epoch=fail_at_epoch,
        template=template,
        token_cache=storage_root,
        rows=rows,
        vocab_size=vocab_size,
    )
    results, teachers, report, seconds = _distill_once(
        job, teacher_uris, first, storage_root, run_name, meta, val_y, task
    )
    generations = [
        {"generation": 1, "val_accuracy": results["student"].val_accuracy, "teacher": "ensemble"}
    ]
    later = replace(
        job,
        cfg=replace(
            cfg,
            teacher_weights=[],
            multi_teacher="average",
            ensemble="mean_probs",
            feature_weight=0.0,
            feature_layers=[],
            attention_weight=0.0,
        ),
        fail_at_epoch=None,
    )
    for k in range(2, cfg.generations + 1):
        previous = first["student"] if k == 2 else storage.join(born_again, f"gen-{k - 1}")
        out = outputs["student"] if k == cfg.generations else storage.join(born_again, f"gen-{k}")
        gen_results, _, _, gen_seconds = _distill_once(
            replace(later, seed=seed + k - 1),
            [previous],
            {"student": out},
            storage_root,
            f"{run_name}-gen{k}",
            meta,
            val_y,
            task,
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
                "spec": describe(t.spec),
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


def teacher_training(cfg: TeacherConfig, spec: str) -> DistillConfig:
    """The loop's settings for a teacher: it trains as the baseline student does (labels
    alone, in this process) with the teacher's own epochs, learning rate and batch size."""
    return DistillConfig(
        student=spec,
        alpha=1.0,
        student_epochs=cfg.teacher_epochs,
        student_lr=cfg.teacher_lr,
        student_batch_size=cfg.batch_size,
        workers=0,
        augment=list(cfg.teacher_augment),
        # A teacher learns from labels; "online" only lets its batches be augmented.
        teacher_mode="online" if cfg.teacher_augment else "offline",
    )


def train_teacher(
    dataset_uri: str,
    spec: str,
    cfg: TeacherConfig,
    seed: int,
    folder: Path,
    extra: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one teacher through the loop, in this process, and save its best validation
    epoch to `folder` (`extra` goes into its spec.json). `on_epoch(stats)` sees each
    epoch's metrics."""
    limit_threads()  # a pod's CPU limit, not the node's cores
    data = open_source(dataset_uri)
    views_apply(bool(cfg.teacher_augment), "--teacher-augment", data.meta.kind)
    with tempfile.TemporaryDirectory(prefix="kdflow-teacher-") as tmp:
        template = prepare_template(
            spec, data, tmp, seed, option="--teachers", trust_remote_code=cfg.trust_remote_code,
            vocab_size=cfg.vocab_size,
        )
        job = WorkerJob(
            cfg=teacher_training(cfg, spec),
            dataset=dataset_uri,
            roles=["teacher"],
            seed=seed,
            run_dir="",
            template=template,
            task=task_for(data.meta),
        )
        (role,), history = train(job, InProcess(local_device(), on_epoch))
    role.classifier.cpu().eval()
    source_for(spec).save(role.classifier, folder, data.meta, {"role": "teacher", **(extra or {})})
    return {
        "val_accuracy": role.best_acc,
        "params": count_params(role.classifier),
        "history": role_history(history, "teacher"),
        "tokenize_seconds": float(history[0].get("tokenize_seconds", 0.0)) if history else 0.0,
    }
