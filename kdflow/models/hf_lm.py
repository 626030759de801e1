"""Hugging Face causal language models as kdflow models (`--task causal-lm`): the wrapper the
loop trains, its folder, and the three ways one comes in (`hf-config:`, `hf-from-teacher:`,
`hf:`), all through `AutoModelForCausalLM`.

`HfCausalLM` takes kdflow's packed corpus blocks (`kdflow.models.lm_tokenizer.LMEncoder`):
int64 B × 2 × L holding token ids and, per token, the number of the document it belongs to
within its block (0 for padding). Documents are packed end to end, so the model is given a
block-diagonal causal mask (B × 1 × L × L, True where a token may attend: earlier tokens of
its own document) and positions that restart at each document, which is what transformers'
own packed training does with flash-attention's varlen kernels; the 4-D mask works with
every attention implementation (eager, sdpa) on CPU and GPU. Its forward returns the last
hidden states B × L × H, not logits: the losses (`kdflow.distill.lm_losses`) apply the LM
head chunk by chunk, so B × L × V logits never exist at once.

Tokenizers: a fresh `hf-config:` teacher gets a byte-level BPE trained on the training
corpus (`train_bpe`, --vocab-size); a fresh student, or one made from a teacher, takes the
first teacher's tokenizer, so that every model of a run shares one vocabulary (checked by
`same_vocabulary`; cross-tokenizer KD is not done). Weights are safetensors only, and no
code from a folder runs unless --trust-remote-code asks for it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdflow.errors import ConfigError
from kdflow.models.hf import (
    KIND,
    SPEC,
    copy_from_teacher,
    evenly_spaced,
    load_folder,
    model_summary,
    quiet_transformers,
    write_spec,
)
from kdflow.models.sources import PrepareContext

log = logging.getLogger(__name__)

TASK = "causal-lm"
CAUSAL = ("ForCausalLM", "LMHeadModel")
"""Architecture name endings of the causal LMs AutoModelForCausalLM loads."""
EXAMPLE_TYPES = ("gpt2", "llama", "qwen2", "mistral")


def packed_arguments(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's keyword arguments for packed blocks `x` (B × 2 × L: ids, segments): the
    block-diagonal causal mask and per-document positions. A padding token attends only to
    itself, so no row of the mask is empty (an empty row gives NaN under sdpa)."""
    ids, segments = x[:, 0].long(), x[:, 1].long()
    length = ids.shape[1]
    index = torch.arange(length, device=ids.device)
    causal = index[None, :] <= index[:, None]
    same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, :, None] > 0)
    mask = (same & causal[None]) | torch.eye(length, dtype=torch.bool, device=ids.device)[None]
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    first = torch.where(starts, index[None, :].expand_as(segments), 0).cummax(dim=1).values
    return {"input_ids": ids, "attention_mask": mask[:, None], "position_ids": index - first}


class HfCausalLM(nn.Module):
    """A transformers causal LM that takes packed corpus blocks and returns hidden states."""

    tokens_last = True

    def __init__(self, model: Any, tokenizer: Any, max_length: int, source: str) -> None:
        from kdflow.models.lm_tokenizer import LMEncoder

        super().__init__()
        self.hf = model
        self.encoder = LMEncoder(tokenizer, max_length)
        self.spec = source
        self.n_classes = 0
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.input_shape = [2, max_length]

    @property
    def tokenizer(self) -> Any:
        return self.encoder.tokenizer

    @property
    def lm_head(self) -> nn.Module:
        """The output embeddings (V × H), which the chunked losses apply."""
        head: nn.Module = self.hf.get_output_embeddings()
        return head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Last hidden states B × L × H of the packed blocks `x`."""
        out = self.hf.base_model(**packed_arguments(x))
        hidden: torch.Tensor = out.last_hidden_state
        return hidden

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Full logits B × L × V (small batches only: generation, tests)."""
        logits: torch.Tensor = self.lm_head(self(x))
        return logits

    @torch.no_grad()
    def generate(self, prompt: str, max_new_tokens: int) -> tuple[str, int]:
        """A greedy continuation of `prompt` (batch 1, KV cache), and how many tokens it has;
        it stops at the end-of-text token."""
        tokenizer = self.tokenizer
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        if ids.shape[1] == 0:
            ids = torch.tensor([[tokenizer.eos_token_id]])
        ids = ids[:, -max(1, self.encoder.max_length - max_new_tokens):]
        device = next(self.parameters()).device
        out = self.hf.generate(
            ids.to(device),
            attention_mask=torch.ones_like(ids).to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = out[0, ids.shape[1]:]
        return tokenizer.decode(new, skip_special_tokens=True), int(new.shape[0])

    def flops(self) -> int:
        """2·N (non-embedding parameters) multiply-adds per token over one block (Kaplan et
        al. 2020), attention's L² terms left out."""
        params = self.hf.num_parameters(exclude_embeddings=True)
        return int(2 * params * self.encoder.max_length)

    def vocabulary(self) -> str:
        """The tokenizer in a few words, for mismatch errors."""
        return f"{len(self.tokenizer):,} tokens ({type(self.tokenizer).__name__})"


def same_vocabulary(models: list[tuple[str, HfCausalLM]]) -> None:
    """ConfigError unless every model tokenizes alike (the same tokenizer at the same
    length): token-level KD compares distributions over one vocabulary."""
    (first_name, first), *rest = models
    for name, model in rest:
        if model.encoder.fingerprint != first.encoder.fingerprint:
            raise ConfigError(
                f"{name} and {first_name} use different tokenizers ({model.vocabulary()} vs "
                f"{first.vocabulary()}); token-level distillation needs one vocabulary: give "
                "a student that shares the teachers' tokenizer (hf-config: or "
                "hf-from-teacher: take the first teacher's)",
                option="--student" if name.startswith("student") else "--teachers",
            )


def check_positions(config: Any, max_length: int, spec: str, option: str) -> None:
    """ConfigError when the model has fewer positions than --max-length."""
    positions = None
    for key in ("n_positions", "max_position_embeddings"):
        if getattr(config, key, None):
            positions = int(getattr(config, key))
            break
    if positions is not None and positions < max_length:
        raise ConfigError(
            f"--max-length: {max_length} tokens per sequence, but {spec} has {positions} "
            f"positions; give --max-length {positions} or less",
            option="--max-length",
        )


def buildable(config: Any, spec: str, option: str) -> None:
    """ConfigError when transformers cannot build a causal LM from `config` (a width that
    the heads do not divide, say): built on the meta device, so no weights are made."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(config)
    except (ValueError, TypeError, AttributeError, AssertionError) as exc:
        why = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{option}: {spec}: {why}", option=option) from exc


def is_causal_folder(config: dict[str, Any]) -> bool:
    """Whether a folder's config.json is a causal LM (by its architectures, else its type)."""
    architectures = [str(a) for a in config.get("architectures") or []]
    if architectures:
        return any(a.endswith(CAUSAL) for a in architectures)
    return str(config.get("model_type", "")) in causal_types()


def causal_types() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def check_causal_type(model_type: str, spec: str, option: str) -> None:
    if model_type not in causal_types():
        examples = ", ".join(EXAMPLE_TYPES)
        raise ConfigError(
            f"{option}: {spec}: {model_type} is not a causal language model; --task "
            f"causal-lm takes a type with a causal-LM head ({examples}, ...)",
            option=option,
        )


def save_lm(model: HfCausalLM, folder: Path, text_columns: list[str],
            extra: dict[str, Any]) -> Path:
    """`save_pretrained` of the model (safetensors) and its tokenizer, plus spec.json."""
    quiet_transformers()
    folder.mkdir(parents=True, exist_ok=True)
    model.hf.config.pad_token_id = model.tokenizer.pad_token_id
    model.hf.save_pretrained(folder)
    for stale in folder.glob("pytorch_model*.bin"):
        stale.unlink()
    model.tokenizer.save_pretrained(folder)
    from kdflow import __version__

    spec = {
        "format_version": 1,
        "kdflow_version": __version__,
        "kind": KIND,
        "task": TASK,
        "inputs": "corpus",
        "model": model_summary(model.hf.config),
        "input_shape": list(model.input_shape),
        "n_features": 0,
        "n_classes": 0,
        "class_names": [],
        "feature_names": [],
        "text_columns": list(text_columns),
        "max_length": model.encoder.max_length,
        "vocab_size": model.vocab_size,
        "tokenizer_fingerprint": model.encoder.fingerprint,
        "source": model.spec,
    }
    return write_spec(folder, spec, extra)


def load_lm(folder: Path, train: bool = False) -> tuple[HfCausalLM, dict[str, Any]]:
    """A saved folder as an `HfCausalLM` (eval mode unless `train`), weights checked."""
    model, tokenizer, spec = load_folder(folder, "AutoModelForCausalLM", "causal LM")
    wrapped = HfCausalLM(model, tokenizer, int(spec["max_length"]), str(spec.get("source", "")))
    wrapped.train(train)
    return wrapped, spec


def reads_corpus(folder: Path) -> bool:
    """Whether a saved kdflow folder holds a causal LM."""
    spec = json.loads((folder / SPEC).read_text())
    return spec.get("task") == TASK


def _ready_tokenizer(tokenizer: Any) -> Any:
    """A pretrained tokenizer with the end-of-text and padding tokens packing needs (GPT-2's
    has no pad token: its end-of-text token pads, as transformers' own examples do)."""
    if tokenizer.eos_token_id is None:
        raise ConfigError(
            "the model's tokenizer has no end-of-text token, which packing documents needs"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def fresh_lm(spec: str, model_type: str, overrides: dict[str, Any], tokenizer: Any,
             max_length: int, seed: int, option: str) -> HfCausalLM:
    """A fresh causal LM of `model_type` with `overrides`, sized to `tokenizer`."""
    from transformers import AutoModelForCausalLM

    from kdflow.models.hf_config import config_for

    check_causal_type(model_type, spec, option)
    config = config_for(model_type, overrides, spec, option)
    config.vocab_size = len(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else (
        tokenizer.eos_token_id)
    config.eos_token_id = tokenizer.eos_token_id
    check_positions(config, max_length, spec, option)
    buildable(config, spec, option)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    return HfCausalLM(model, tokenizer, max_length, spec)


def lm_from_teacher(spec: str, teacher: HfCausalLM, overrides: dict[str, Any], seed: int,
                    option: str) -> tuple[HfCausalLM, dict[str, Any]]:
    """The teacher's config with `overrides`, its tokenizer, and its weights where shapes
    match: student layer j starts from teacher layer j·N/M (evenly spaced depth pruning, as
    Minitron, Muralidharan et al. 2024, and DistilBERT do); returns what was copied."""
    from transformers import AutoModelForCausalLM

    from kdflow.models.hf_config import config_for

    model_type = str(teacher.hf.config.model_type)
    config = config_for(model_type, overrides, spec, option)
    for key, value in teacher.hf.config.to_dict().items():
        if key not in overrides and key not in ("architectures", "transformers_version"):
            setattr(config, key, value)
    check_positions(config, teacher.encoder.max_length, spec, option)
    torch.manual_seed(seed)
    student = AutoModelForCausalLM.from_config(config)
    depth = int(getattr(config, "num_hidden_layers", 0) or 0)
    teacher_depth = int(getattr(teacher.hf.config, "num_hidden_layers", 0) or 0)
    picked = evenly_spaced(teacher_depth, depth) if depth and teacher_depth else []
    counts = copy_from_teacher(student, teacher.hf, picked)
    log.info("%s: %d tensors from the teacher (layers %s), %d fresh", spec, counts["copied"],
             picked, counts["kept"])
    wrapped = HfCausalLM(student, teacher.tokenizer, teacher.encoder.max_length, spec)
    return wrapped, {"from_teacher": {"layers": picked, **counts}}


def import_lm(where: Path, spec: str, max_length: int, trust_remote_code: bool,
              option: str) -> HfCausalLM:
    """A pretrained causal LM folder (config.json, safetensors, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((where / "config.json").read_text())
    if not is_causal_folder(config):
        architectures = config.get("architectures") or [config.get("model_type", "?")]
        raise ConfigError(
            f"{option}: {spec} is not a causal language model ({architectures[0]}); --task "
            "causal-lm takes ...ForCausalLM / ...LMHeadModel folders",
            option=option,
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where, use_safetensors=True, trust_remote_code=trust_remote_code
        )
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        why = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{option}: {spec}: cannot load: {why}", option=option) from exc
    check_positions(model.config, max_length, spec, option)
    return HfCausalLM(model, _ready_tokenizer(tokenizer), max_length, spec)


def _first_teacher_tokenizer(teacher: str, option: str) -> Any:
    """The tokenizer saved with the first teacher (local or s3://)."""
    from transformers import AutoTokenizer

    from kdflow.data import storage

    with storage.local_dir(teacher) as folder:
        if not reads_corpus(folder):
            raise ConfigError(
                f"{option}: the first teacher is not a causal LM; a causal-lm student "
                "takes its tokenizer", option=option,
            )
        return AutoTokenizer.from_pretrained(folder)


def prepare_fresh(spec: str, context: PrepareContext, folder: Path) -> None:
    """`hf-config:TYPE:...` on a corpus: with a first teacher, its tokenizer (one vocabulary
    for the run); without one (a teacher itself), a byte-level BPE trained on the training
    split's documents."""
    from kdflow.models.hf_config import _split_type, parse_overrides
    from kdflow.models.lm_tokenizer import default_vocab_size, train_bpe

    option, data = context.option, context.data
    model_type, rest = _split_type(spec, option)
    check_causal_type(model_type, spec, option)
    overrides = parse_overrides(rest, spec, option)
    if context.teacher is not None:
        tokenizer = _first_teacher_tokenizer(context.teacher, option)
    else:
        documents = [t for column in data.texts("train") for t in column]
        size = int(overrides.pop("vocab_size", 0) or context.vocab_size
                   or default_vocab_size(documents))
        tokenizer = train_bpe(documents, size)
        log.info("%s: byte-level BPE of %d tokens trained on %d training documents", spec,
                 len(tokenizer), len(documents))
    overrides.pop("vocab_size", None)
    model = fresh_lm(spec, model_type, overrides, tokenizer, data.meta.max_length, context.seed,
                     option)
    save_lm(model, folder, data.meta.text_columns, {})


def prepare_from_teacher(spec: str, context: PrepareContext, folder: Path) -> None:
    from kdflow.data import storage
    from kdflow.models.hf_config import parse_overrides

    option = context.option
    assert context.teacher is not None
    with storage.local_dir(context.teacher) as teacher_dir:
        if not reads_corpus(teacher_dir):
            raise ConfigError(
                f"{option}: hf-from-teacher on a corpus needs the first teacher to be a "
                "causal LM", option=option,
            )
        teacher, _ = load_lm(teacher_dir)
    overrides = parse_overrides(spec.removeprefix("hf-from-teacher:"), spec, option)
    student, extra = lm_from_teacher(spec, teacher, overrides, context.seed, option)
    save_lm(student, folder, context.data.meta.text_columns, extra)


def prepare_pretrained(spec: str, context: PrepareContext, folder: Path, where: Path) -> None:
    model = import_lm(where, spec, context.data.meta.max_length, context.trust_remote_code,
                      context.option)
    save_lm(model, folder, context.data.meta.text_columns,
            {"trust_remote_code": context.trust_remote_code})
