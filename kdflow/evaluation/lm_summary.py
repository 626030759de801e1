"""The evaluate step on a corpus (`--task causal-lm`): every model's perplexity and token
accuracy on the test split, the teachers' ensemble on the same tokens, the student's
agreement with it, greedy generation speed on the CPU, a few continuations, the champion,
and the gates.

All models of a run share one tokenizer (`kdflow.distill.lm_checks`), so the test blocks
are encoded once and every model scores the same tokens. The ensemble's distribution at
each token is the mean of the teachers' softmax (weighted as the distillation weighted
them), computed per chunk of tokens, so no B × L × V tensor of all teachers exists at once.

Generation speed is tokens per second at batch 1, greedy with the KV cache, from a fixed
prompt set: the first words of the first GENERATION_PROMPTS test documents; one warm-up
generation is not counted. The `speedup` gate compares the fastest teacher's time per
generated token with the student's.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdflow import progress
from kdflow.config import GateConfig
from kdflow.data.prepared import DatasetMeta, Split
from kdflow.data.sources import open_source
from kdflow.distill.lm_task import EVAL_ROWS, token_metrics
from kdflow.evaluation.gates import (
    EPS,
    Gate,
    LMOutcomes,
    common_gates,
    lm_beats_baseline_gate,
    lm_paired_gate,
)
from kdflow.mlflow.client import DATASET_TAG, resolve_tracking_uri
from kdflow.mlflow.logged_models import download_model
from kdflow.mlflow.versions import champion_version, resolve_model_uri
from kdflow.models.sources import encoder_of, load_saved
from kdflow.models.zoo import MLFLOW_URI_PREFIX, count_params

log = logging.getLogger(__name__)

GENERATION_PROMPTS = 4
PROMPT_WORDS = 8
NEW_TOKENS = 32
CHUNK_TOKENS = 1024


def prompts_of(documents: list[str], n: int = GENERATION_PROMPTS) -> list[str]:
    """The fixed prompt set: the first PROMPT_WORDS words of the first `n` documents."""
    found = [" ".join(d.split()[:PROMPT_WORDS]) for d in documents if d.split()]
    return found[:n] or ["The"]


def generation_speed(model: nn.Module, prompts: list[str], new_tokens: int = NEW_TOKENS
                     ) -> dict[str, Any]:
    """Greedy continuations of `prompts` at batch 1 and the tokens per second they took
    (after one uncounted warm-up)."""
    generate: Any = model.generate
    generate(prompts[0], 2)
    texts, tokens, seconds = [], 0, 0.0
    for prompt in prompts:
        started = time.perf_counter()
        text, made = generate(prompt, new_tokens)
        seconds += time.perf_counter() - started
        texts.append(text)
        tokens += made
    return {
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
        "ms_per_token": 1000.0 * seconds / max(tokens, 1),
        "continuations": [{"prompt": p, "continuation": t} for p, t in zip(prompts, texts,
                                                                           strict=True)],
    }


@torch.no_grad()
def ensemble_metrics(teachers: list[nn.Module], weights: list[float], student: nn.Module,
                     split: Split) -> dict[str, float]:
    """The teachers' ensemble on `split`'s counted tokens: perplexity and token accuracy of
    the weighted mean of their distributions, and the share of tokens where the student's
    top token is the ensemble's (top-1 agreement)."""
    w = [float(v) / sum(weights) for v in weights]
    total, correct, agree, tokens = 0.0, 0, 0, 0
    for start in range(0, len(split.x), EVAL_ROWS):
        x = torch.from_numpy(np.ascontiguousarray(split.x[start : start + EVAL_ROWS]))
        y = torch.from_numpy(np.ascontiguousarray(split.y[start : start + EVAL_ROWS]))
        counted = (y != -100).reshape(-1)
        labels = y.reshape(-1)[counted]
        teacher_h = [_counted_hidden(m, x, counted) for m in teachers]
        student_h = _counted_hidden(student, x, counted)
        for begin in range(0, int(labels.numel()), CHUNK_TOKENS):
            end = begin + CHUNK_TOKENS
            probs = torch.stack([
                wk * torch.softmax(head(m)(h[begin:end]).float(), -1)
                for wk, m, h in zip(w, teachers, teacher_h, strict=True)
            ]).sum(0)
            target = labels[begin:end]
            total += float(torch.log(probs.gather(1, target[:, None]).clamp_min(1e-30)).sum())
            top = probs.argmax(-1)
            correct += int((top == target).sum())
            student_top = head(student)(student_h[begin:end]).argmax(-1)
            agree += int((student_top == top).sum())
            tokens += int(target.numel())
    nll = -total / max(tokens, 1)
    return {
        "perplexity": float(np.exp(min(nll, 700.0))),
        "token_accuracy": correct / max(tokens, 1),
        "accuracy": correct / max(tokens, 1),
        "agreement": agree / max(tokens, 1),
        "tokens": tokens,
    }


def head(model: nn.Module) -> nn.Module:
    """A causal LM's output embeddings (`HfCausalLM.lm_head`)."""
    found: nn.Module = model.lm_head  # type: ignore[assignment]
    return found


def _counted_hidden(model: nn.Module, x: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    hidden = model(x)
    return hidden.reshape(-1, hidden.shape[-1])[counted]


def evaluate_lm_models(
    dataset_dir: Path,
    teacher_dirs: list[Path],
    student_dir: Path,
    baseline_dir: Path,
    gates_cfg: GateConfig,
    tracking_uri: str | None,
    model_name: str,
    dataset_info: dict[str, Any],
    teacher_sources: list[str] | None = None,
    histories: dict[str, Any] | None = None,
    weights: list[float] | None = None,
) -> dict[str, Any]:
    """The run summary of a causal-lm run (`kdflow.evaluation.summary.evaluate_models`'s
    counterpart; the same arguments, `weights` the ensemble's, uniform by default)."""
    progress.emit("evaluate", 0, 3, "test-split perplexity")
    data = open_source(str(dataset_dir))
    meta = data.meta
    teachers = [load_saved(d) for d in teacher_dirs]
    student, student_spec = load_saved(student_dir)
    baseline, baseline_spec = load_saved(baseline_dir)
    encoder = encoder_of(student)
    test = data.read("test", encoder=encoder)
    prompts = prompts_of(data.texts("test", 0, GENERATION_PROMPTS * 4)[-1])
    uri = resolve_tracking_uri(tracking_uri)
    sources = list(teacher_sources or [])

    per_row: dict[str, np.ndarray] = {}

    def entry(model: nn.Module, spec: dict[str, Any], folder: Path, given: str | None = None,
              name: str = "") -> dict[str, Any]:
        metrics = token_metrics(model, test, per_row=bool(name))
        if name:
            per_row[name] = metrics["row_nll"]
            per_row["tokens"] = metrics["row_tokens"]  # the same blocks for every model
        speed = generation_speed(model, prompts)
        return {
            "spec": given or str(spec.get("source") or spec["model"]["arch"]),
            "perplexity": metrics["perplexity"],
            "token_accuracy": metrics["token_accuracy"],
            "accuracy": metrics["token_accuracy"],
            "tokens": metrics["tokens"],
            "params": count_params(model),
            "tokens_per_s": speed["tokens_per_s"],
            "latency_ms": speed["ms_per_token"],
            "continuations": speed["continuations"],
            "file_bytes": sum(p.stat().st_size for p in Path(folder).glob("*.safetensors")),
        }

    summary: dict[str, Any] = {"task": "causal-lm", "dataset": dataset_info, "teachers": []}
    for i, ((model, spec), folder) in enumerate(zip(teachers, teacher_dirs, strict=True)):
        given = sources[i] if i < len(sources) and sources[i] else None
        teacher = entry(model, spec, folder, given)
        if given and given.startswith(MLFLOW_URI_PREFIX):
            teacher["registry"] = resolve_model_uri(uri, given)
        summary["teachers"].append(teacher)
    progress.emit("evaluate", 1, 3, "ensemble, baseline and student")
    weights = weights or [1.0] * len(teachers)
    summary["ensemble"] = ensemble_metrics([m for m, _ in teachers], weights, student, test)
    summary["baseline"] = entry(baseline, baseline_spec, baseline_dir, name="baseline")
    summary["student"] = entry(student, student_spec, student_dir, name="student")
    summary["student"]["agreement"] = summary["ensemble"]["agreement"]
    summary["student"]["onnx"] = {"exported": False, "reason": "causal LMs are registered "
                                  "as transformers models, not exported to ONNX"}

    progress.emit("evaluate", 2, 3, "champion and gates")
    seen = champion_version(uri, model_name)
    summary["champion_seen"] = None if seen is None else int(seen.version)
    summary["champion"], not_compared = lm_champion(uri, model_name, meta, test, seen, encoder)
    if summary["champion"] is not None:
        per_row["champion"] = summary["champion"].pop("row_nll")
    gates = lm_gates(gates_cfg, summary, not_compared,
                     LMOutcomes(**per_row) if len(per_row["tokens"]) else None)
    summary["gates"] = {
        g.name: {k: v for k, v in g.to_dict().items() if k != "name"} for g in gates
    }
    summary["passed"] = all(g.passed for g in gates)
    summary["registered"] = None
    summary["history"] = histories or {}
    progress.emit("evaluate", 3, 3, "gates passed" if summary["passed"] else "a gate did not pass")
    return summary


def lm_champion(uri: str, model_name: str, meta: DatasetMeta, test: Split, seen: Any,
                encoder: Any) -> tuple[dict[str, Any] | None, str | None]:
    """The champion's perplexity on this test split, or why it could not be scored (a
    classifier, or another tokenizer): the gate then fails closed."""
    if seen is None:
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        model, spec = load_saved(
            download_model(uri, f"models:/{model_name}/{seen.version}", Path(tmp))
        )
        if spec.get("task") != "causal-lm":
            reason = f"champion v{seen.version} not compared: it is not a causal LM"
        elif spec.get("tokenizer_fingerprint") != encoder.fingerprint:
            reason = (f"champion v{seen.version} not compared: it uses another tokenizer "
                      f"({int(spec.get('vocab_size', 0)):,} tokens)")
        else:
            metrics = token_metrics(model, test, per_row=True)
            return {
                "version": int(seen.version),
                "row_nll": metrics["row_nll"],
                "perplexity": metrics["perplexity"],
                "token_accuracy": metrics["token_accuracy"],
                "accuracy": metrics["token_accuracy"],
                "dataset_sha256": (seen.tags or {}).get(DATASET_TAG),
            }, None
    log.warning("%s", reason)
    return None, reason


def lm_gates(cfg: GateConfig, summary: dict[str, Any], champion_unscored: str | None,
             outcomes: LMOutcomes | None = None) -> list[Gate]:
    """perplexity_retention, beats_baseline (the baseline's log perplexity less the student's
    above --min-gain-over-baseline, 0 by default: a lower perplexity), compression,
    speedup (time per generated token) and no regression vs the champion (perplexity at
    most (1 + max_regression) × the champion's). With `outcomes` (each test block's
    log-likelihoods) and --gate-test paired, beats_baseline and the champion gate decide
    on the paired bootstrap interval over blocks, as the classification gates do on rows."""
    student, baseline, ensemble = summary["student"], summary["baseline"], summary["ensemble"]
    ratio = student["perplexity"] / max(ensemble["perplexity"], 1e-12)
    gain = float(np.log(baseline["perplexity"]) - np.log(student["perplexity"]))
    margin = cfg.min_gain_over_baseline
    if outcomes is None:
        beats = Gate("beats_baseline", gain > margin + EPS, round(gain, 4), margin, ">",
                     f"log perplexity: baseline log {baseline['perplexity']:.3f} - student "
                     f"log {student['perplexity']:.3f}")
    else:
        beats = lm_beats_baseline_gate(cfg, outcomes, gain)
    gates = [
        Gate(
            "perplexity_retention",
            ratio <= cfg.max_perplexity_ratio + EPS,
            round(ratio, 4),
            cfg.max_perplexity_ratio,
            "<=",
            f"student perplexity {student['perplexity']:.3f} / ensemble "
            f"{ensemble['perplexity']:.3f}",
        ),
        beats,
        *common_gates(cfg, student, summary["teachers"]),
    ]
    champion = summary.get("champion")
    if champion is None:
        detail = champion_unscored or "no champion yet"
        if champion_unscored:
            detail += ("; a model that reads other data replaces the champion only by hand "
                       "(kdflow promote), or register it under another --model-name")
        gates.append(Gate("no_regression_vs_champion", not champion_unscored, None,
                          cfg.max_regression, "<=", detail))
        return gates
    rise = student["perplexity"] / max(champion["perplexity"], 1e-12) - 1.0
    if outcomes is None or outcomes.champion is None:
        gates.append(Gate(
            "no_regression_vs_champion",
            rise <= cfg.max_regression + EPS,
            round(rise, 4),
            cfg.max_regression,
            "<=",
            f"student perplexity {student['perplexity']:.3f} / champion v{champion['version']} "
            f"{champion['perplexity']:.3f} - 1",
        ))
        return gates
    tolerance = f" by more than {cfg.max_regression:.0%} in perplexity"
    gates.append(lm_paired_gate(
        "no_regression_vs_champion", cfg, outcomes, "champion", "student",
        -float(np.log1p(cfg.max_regression)), rise <= cfg.max_regression + EPS, round(rise, 4),
        cfg.max_regression, "<=",
        {"passed": f"no worse than champion v{champion['version']}{tolerance}",
         "failed": f"worse than champion v{champion['version']}{tolerance}",
         "inconclusive": f"cannot tell whether it is worse than champion "
                         f"v{champion['version']}{tolerance}"}))
    return gates
