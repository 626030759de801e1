"""Hugging Face transformers classifiers as kdflow models: the wrapper the loop trains, the
tokenizer that encodes its inputs, WordPiece training for fresh models, and the folder.

`HfClassifier` wraps an `AutoModelForSequenceClassification` so it takes the one packed
input every kdflow model takes (`kdflow.data.sources`): an int64 B × K × L array of token
ids, attention mask and, where the model has them, token types. It trims each batch to its
longest text (padding is on the right, so the logits do not change) and, only while a
distillation hook listens, asks the model for its hidden states and attention maps and
passes each through an identity "tap" module (`hidden.0` is the embeddings' output,
`hidden.i` layer i's, `attention.i` layer i's maps): the feature and attention hints of
`kdflow.distill.hints` then hook these modules as they hook any layer.

A saved folder is what `save_pretrained` writes (config.json, model.safetensors, tokenizer
files) plus kdflow's spec.json (kind `hf`); loading uses `use_safetensors=True` and never
runs code from the folder unless its spec records `trust_remote_code`.

`HfTapped` (the taps, the run with hidden states and attention maps, the head) and the
folder helpers (`save_labelled`, `model_summary`, `write_spec`, `checked_spec`) are shared
with the image classifiers of `kdflow.models.hf_vision`.

transformers and tokenizers are imported inside the functions: a tabular run never pays
for them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdflow import __version__
from kdflow.errors import ModelFormatError

log = logging.getLogger(__name__)

KIND = "hf"
SPEC = "spec.json"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
DEFAULT_VOCAB = 8000
"""WordPiece vocabulary of a fresh model's tokenizer, unless its config names vocab_size."""
ENCODE_ROWS = 8192
TRIM_STEP = 8


class TextEncoder:
    """A tokenizer at a fixed maximum length: rows of text to packed int64 B × K × L."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length
        self.token_types = "token_type_ids" in tokenizer.model_input_names
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            state = json.loads(backend.to_str())
            state.pop("truncation", None), state.pop("padding", None)
            described = json.dumps(state, sort_keys=True)
        else:
            described = json.dumps(sorted(tokenizer.get_vocab().items()))
        digest = hashlib.sha256(f"{described}|{max_length}|{self.token_types}".encode())
        self.fingerprint = digest.hexdigest()

    @property
    def channels(self) -> int:
        return 3 if self.token_types else 2

    def encode(self, columns: Sequence[Sequence[str]]) -> np.ndarray:
        rows = len(columns[0]) if columns else 0
        out = np.zeros((rows, self.channels, self.max_length), np.int64)
        for start in range(0, rows, ENCODE_ROWS):
            stop = min(rows, start + ENCODE_ROWS)
            first = list(columns[0][start:stop])
            second = list(columns[1][start:stop]) if len(columns) > 1 else None
            enc = self.tokenizer(
                first,
                second,
                truncation=True,
                max_length=self.max_length,
                padding="max_length",
                return_tensors="np",
                return_token_type_ids=self.token_types,
            )
            out[start:stop, 0] = enc["input_ids"]
            out[start:stop, 1] = enc["attention_mask"]
            if self.token_types:
                out[start:stop, 2] = enc["token_type_ids"]
        return out


def quiet_transformers() -> None:
    """No per-file progress bars from transformers: a step's log is read, not watched."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _exporting() -> bool:
    return bool(torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export())


class HfTapped(nn.Module):
    """What a transformers classifier shares with the others, whatever it reads: identity
    taps on its hidden states and attention maps (for the hints, which hook modules), the
    run that feeds them only while a hook listens, and the classification head."""

    hf: Any
    """The transformers `PreTrainedModel` (typed loosely: transformers is imported lazily)."""
    spec: str
    n_classes: int
    input_shape: list[int]
    """One sample's shape as the data holds it (the packed K × L, or C × H × W)."""
    tokens_last = True
    """Whether 3-D hidden states are B × L × D (tokens); CNNs' are 4-D anyway."""

    def make_taps(self, hidden: int, attention: int) -> None:
        """`hidden` identity taps (`hidden.i`) and `attention` ones (`attention.i`)."""
        self.hidden_taps = nn.ModuleList([nn.Identity() for _ in range(hidden)])
        self.attention_taps = nn.ModuleList([nn.Identity() for _ in range(attention)])

    @staticmethod
    def _listened(taps: nn.ModuleList) -> bool:
        return any(t._forward_hooks or t._forward_pre_hooks for t in taps)

    def run(self, **kwargs: Any) -> torch.Tensor:
        """The model's logits for `kwargs`, asking for hidden states and attention maps only
        while a tap is hooked (they cost memory, and sdpa attention returns no maps)."""
        hidden, attention = self._listened(self.hidden_taps), self._listened(self.attention_taps)
        if attention and self.hf.config._attn_implementation != "eager":
            self.hf.set_attn_implementation("eager")  # sdpa returns no attention maps
        if hidden:
            kwargs["output_hidden_states"] = True
        if attention:
            kwargs["output_attentions"] = True
        out = self.hf(**kwargs)
        if hidden:
            for tap, h in zip(self.hidden_taps, out.hidden_states, strict=False):
                tap(h)
        if attention:
            for tap, a in zip(self.attention_taps, out.attentions, strict=False):
                tap(a)
        logits: torch.Tensor = out.logits
        return logits

    def head(self) -> nn.Module:
        """The last Linear with one output per class: its input is the penultimate features."""
        found = [
            m for m in self.hf.modules()
            if isinstance(m, nn.Linear) and m.out_features == self.n_classes
        ]
        if not found:
            raise ModelFormatError(f"{self.spec}: no classification head (Linear to classes)")
        return found[-1]


class HfClassifier(HfTapped):
    """A transformers sequence classifier that takes kdflow's packed inputs."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int, source: str) -> None:
        super().__init__()
        self.hf = model
        self.encoder = TextEncoder(tokenizer, max_length)
        self.spec = source
        self.n_classes = int(model.config.num_labels)
        self.input_shape = [self.encoder.channels, max_length]
        depth = int(getattr(model.config, "num_hidden_layers", 0) or 0)
        self.make_taps(depth + 1, depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.long()
        if not _exporting() and x.shape[0]:
            # Right padding: cutting it changes no logit. Lengths round up to a multiple of
            # TRIM_STEP so the CPU kernels see a few shapes, not one per batch.
            longest = int(x[:, 1].sum(1).max())
            x = x[..., : max(1, min(x.shape[-1], -(-longest // TRIM_STEP) * TRIM_STEP))]
        kwargs: dict[str, Any] = {"input_ids": x[:, 0], "attention_mask": x[:, 1]}
        if x.shape[1] > 2:
            kwargs["token_type_ids"] = x[:, 2]
        return self.run(**kwargs)

    def example_input(self, rows: int = 2) -> torch.Tensor:
        """A valid packed batch (for probing layer shapes): the tokenizer's encoding of
        a short text."""
        encoded = self.encoder.encode([["kdflow probe text"] * rows])
        return torch.from_numpy(encoded).to(next(self.parameters()).device)

    def flops(self) -> int:
        """Multiply-adds ×2 of one text at the maximum length, from the non-embedding weights
        (Kaplan et al. 2020's 2·N per token), attention's L² terms left out."""
        params = self.hf.num_parameters(exclude_embeddings=True)
        return int(2 * params * self.encoder.max_length)


def weights_sha256(folder: Path) -> str:
    """SHA-256 over the folder's safetensors files (one, or a sharded checkpoint's)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def save_labelled(model: HfTapped, folder: Path, classes: list[str]) -> Any:
    """`save_pretrained` of the model (safetensors only) with the data's class names as its
    config's labels; returns the config."""
    quiet_transformers()
    folder.mkdir(parents=True, exist_ok=True)
    config = model.hf.config
    config.id2label = {i: str(c) for i, c in enumerate(classes)}
    config.label2id = {str(c): i for i, c in enumerate(classes)}
    model.hf.save_pretrained(folder)
    for stale in folder.glob("pytorch_model*.bin"):
        stale.unlink()
    return config


def model_summary(config: Any) -> dict[str, Any]:
    """The spec's `model`: architecture, depth and width, from a transformers config (a
    CNN's depth is its blocks over all stages, its width the last stage's channels)."""
    layers = getattr(config, "num_hidden_layers", 0) or sum(getattr(config, "depths", None) or [])
    hidden = getattr(config, "hidden_size", 0) or (getattr(config, "hidden_sizes", None) or [0])[-1]
    return {"arch": str(config.model_type), "layers": int(layers or 0), "hidden": int(hidden or 0)}


def spec_head(model: HfTapped, config: Any, task: str) -> dict[str, Any]:
    """The fields every transformers model's spec.json starts with."""
    return {
        "format_version": 1,
        "kdflow_version": __version__,
        "kind": KIND,
        "task": task,
        "model": model_summary(config),
        "input_shape": list(model.input_shape),
    }


def write_spec(folder: Path, spec: dict[str, Any], extra: dict[str, Any]) -> Path:
    """spec.json: `spec`, the SHA-256 of the folder's safetensors files, then `extra`."""
    spec = {**spec, "weights_sha256": weights_sha256(folder), **extra}
    (folder / SPEC).write_text(json.dumps(spec, indent=2))
    return folder


def checked_spec(folder: Path) -> dict[str, Any]:
    """A saved folder's spec.json, after checking its safetensors files against it."""
    quiet_transformers()
    spec: dict[str, Any] = json.loads((folder / SPEC).read_text())
    if spec.get("weights_sha256") and weights_sha256(folder) != spec["weights_sha256"]:
        raise ModelFormatError(f"{folder}: the weights do not match spec.json's SHA-256")
    return spec


def save_hf(
    model: HfClassifier,
    folder: Path,
    classes: list[str],
    text_columns: list[str],
    extra: dict[str, Any],
) -> Path:
    """`save_pretrained` of the model (safetensors) and its tokenizer, with the data's class
    names as the config's labels, plus spec.json."""
    config = save_labelled(model, folder, classes)
    model.encoder.tokenizer.save_pretrained(folder)
    spec = {
        **spec_head(model, config, "text"),
        "n_features": 0,
        "n_classes": model.n_classes,
        "class_names": [str(c) for c in classes],
        "feature_names": [],
        "text_columns": list(text_columns),
        "max_length": model.encoder.max_length,
        "source": model.spec,
    }
    return write_spec(folder, spec, extra)


def load_folder(folder: Path, auto_class: str, what: str) -> tuple[Any, Any, dict[str, Any]]:
    """A saved folder's transformers model (`auto_class` of transformers, safetensors only),
    its tokenizer and its checked spec.json; remote code only where the spec allows it."""
    import transformers

    spec = checked_spec(folder)
    remote = bool(spec.get("trust_remote_code", False))
    try:
        model = getattr(transformers, auto_class).from_pretrained(
            folder, use_safetensors=True, trust_remote_code=remote
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{folder}: not a loadable {what} folder: {exc}") from exc
    return model, tokenizer, spec


def load_hf(folder: Path, train: bool = False) -> tuple[HfClassifier, dict[str, Any]]:
    """A saved folder as an `HfClassifier` (eval mode unless `train`), weights checked."""
    model, tokenizer, spec = load_folder(folder, "AutoModelForSequenceClassification",
                                         "transformers")
    wrapped = HfClassifier(model, tokenizer, int(spec["max_length"]), str(spec.get("source", "")))
    wrapped.train(train)
    return wrapped, spec


def train_wordpiece(texts: Any, vocab_size: int, lowercase: bool = True) -> Any:
    """A BERT-style WordPiece tokenizer trained on `texts` (an iterator of strings) with
    Hugging Face tokenizers, as a transformers fast tokenizer ([CLS] A [SEP] B [SEP])."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


LAYER_INDEX = r"\.(layer|layers|h|block|blocks)\.(\d+)\."
"""How transformers names a layer of the stack in parameter names (BERT, Llama, GPT-2, T5)."""


def evenly_spaced(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher layer each student layer starts from: j·N/M, so half the depth takes every
    other layer from the first (DistilBERT, Sanh et al. 2019, §3)."""
    return [j * teacher_layers // student_layers for j in range(student_layers)]


def copy_from_teacher(
    student: nn.Module, teacher: nn.Module, picked: list[int] | None
) -> dict[str, int]:
    """Copy the teacher's weights into the student where names and shapes match, student
    layer j from teacher layer picked[j] (None: every tensor from the one of the same name,
    as a CNN's stages keep their blocks' names); returns counts of copied and kept tensors."""
    import re

    pattern = re.compile(LAYER_INDEX)
    source = teacher.state_dict()
    state = student.state_dict()
    copied = 0
    for name, tensor in state.items():
        match = pattern.search(name) if picked is not None else None
        if match is not None and picked is not None:
            j = int(match.group(2))
            if j >= len(picked):
                continue
            start, stop = match.span(2)
            name_in_teacher = f"{name[:start]}{picked[j]}{name[stop:]}"
        else:
            name_in_teacher = name
        found = source.get(name_in_teacher)
        if found is not None and found.shape == tensor.shape:
            state[name] = found.detach().clone()
            copied += 1
    student.load_state_dict(state)
    return {"copied": copied, "kept": len(state) - copied}


def params_of(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
