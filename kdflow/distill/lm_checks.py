"""What the driver checks and derives for a causal-lm run before Ray Train starts: one
vocabulary for every model, a top-k the vocabulary holds, settings that classification
alone takes, and the ensemble's weights from the teachers' validation metrics."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from kdflow.config import LM_TOP_K, DistillConfig
from kdflow.data import storage
from kdflow.data.inputs import Encoder
from kdflow.data.prepared import DatasetMeta
from kdflow.distill.teachers import teacher_spec
from kdflow.errors import ConfigError
from kdflow.models.sources import build, encoder_of

log = logging.getLogger(__name__)

CLASSIFICATION_ONLY = {
    "--feature-weight": lambda cfg: cfg.feature_weight > 0,
    "--attention-weight": lambda cfg: cfg.attention_weight > 0,
    "--generations": lambda cfg: cfg.generations > 1,
    "--multi-teacher": lambda cfg: cfg.multi_teacher != "average",
    "--ensemble": lambda cfg: cfg.ensemble == "mean_logits",
}
"""Options the causal-LM task does not take (yet), and when they are given."""


def lm_top_k(cfg: DistillConfig, vocab_size: int) -> int:
    """The top-k a causal LM's teacher cache keeps (--top-k, 0 taking LM_TOP_K)."""
    top_k = cfg.top_k or LM_TOP_K
    if top_k > vocab_size:
        if cfg.top_k:
            raise ConfigError(
                f"--top-k: {cfg.top_k} logits per token, but the vocabulary has "
                f"{vocab_size:,} tokens; give --top-k {vocab_size} or less",
                option="--top-k",
            )
        return vocab_size
    return top_k


def lm_student_checks(
    cfg: DistillConfig, teacher_uris: list[str], meta: DatasetMeta, template: str | None
) -> tuple[Encoder, int]:
    """The student's encoder and vocabulary size, after checking that the student is a
    causal LM, that every teacher shares its tokenizer, and that no classification-only
    option is given."""
    for option, given in CLASSIFICATION_ONLY.items():
        if given(cfg):
            raise ConfigError(f"{option}: not available for --task causal-lm", option=option)
    with storage.optional_local_dir(template) as folder:
        student = build(cfg.student, meta, template=folder)
    encoder = encoder_of(student)
    lm_head = getattr(student, "lm_head", None)
    if encoder is None or lm_head is None:
        raise ConfigError(
            f"--student: {cfg.student} is not a causal language model; --task causal-lm "
            "takes hf-config:TYPE:..., hf-from-teacher:... or hf:FOLDER of a causal LM",
            option="--student",
        )
    vocab_size = int(lm_head.weight.shape[0])
    for i, uri in enumerate(teacher_uris):
        spec = teacher_spec(uri)
        theirs = spec.get("tokenizer_fingerprint")
        if theirs != encoder.fingerprint:
            raise ConfigError(
                f"--student: teacher {i} ({spec.get('source') or uri}) and the student "
                f"({cfg.student}) use different tokenizers ({int(spec.get('vocab_size', 0)):,} "
                f"vs {vocab_size:,} tokens); token-level distillation needs one vocabulary: "
                "give a student that shares the teachers' tokenizer (hf-config: and "
                "hf-from-teacher: students take the first teacher's)",
                option="--student",
            )
    return encoder, vocab_size


def lm_ensemble_report(val: list[np.ndarray], cfg: DistillConfig) -> dict[str, Any]:
    """Each teacher's validation token accuracy and perplexity (`val` holds the accuracy
    and the log perplexity, as the teacher task computes them) and ensemble weight:
    --teacher-weights when given, the inverse perplexities (normalised) for
    weighted_probs, else uniform. The agreement and
    the ensemble's own metrics are measured on the test split by the evaluate step."""
    accuracy = [float(v[0]) for v in val]
    perplexity = [float(np.exp(float(v[1]))) for v in val]
    if cfg.teacher_weights:
        weights = [w / sum(cfg.teacher_weights) for w in cfg.teacher_weights]
    elif cfg.ensemble == "weighted_probs":
        inverse = [1.0 / p for p in perplexity]
        weights = [w / sum(inverse) for w in inverse]
    else:
        weights = [1.0 / len(val)] * len(val)
    return {
        "mode": cfg.ensemble,
        "weights": weights,
        "teacher_val_accuracy": accuracy,
        "teacher_val_perplexity": perplexity,
        "agreement": [None] * len(val),
        "val_accuracy": None,
    }
