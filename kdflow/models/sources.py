"""Model sources: where a teacher or student comes from, chosen by the spec's prefix.

A spec names its source the way `AutoConfig.for_model` names a class: a prefix picks the
source, the rest is the source's own. Each source builds a fresh model for the data, or
fetches an existing one; saves and loads it (safetensors + spec.json, never a pickle); and
names its layers and attention maps for feature and attention distillation. The loop and
the steps hold a `ModelSource` and never branch on which one it is.

The sources: the zoo (`mlp:hidden=256-256`, no prefix); Hugging Face transformers (`hf:`,
`hf-config:`, `hf-from-teacher:`, `kdflow.models.hf_source`); a user's own factory
(`python:pkg.module:factory`, `kdflow.models.python_source`); and registered models
(`models:/name@alias`, fetched from MLflow by `kdflow.mlflow.source`). Sources are listed
by module path and imported when first asked for, so `kdflow.models` imports neither MLflow
nor a model library until a spec needs it (transformers' auto mappings do the same).

A source whose models need more than the spec to be built (a tokenizer trained on the
data, a teacher's layers) writes an initial model folder once, on the driver (`prepare`);
every role and every worker then builds from that folder (`template`), so they start
from the same weights without repeating the work.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from kdflow.data.prepared import DatasetMeta
from kdflow.data.sources import DataSource, Encoder
from kdflow.errors import ConfigError


class ModelSource(Protocol):
    kind: str
    """What a saved model's spec.json records as `kind`, so a load finds its source."""
    fetches: bool
    """Whether its models exist already (fetched, then used or fine-tuned) rather than
    being built fresh from the spec and trained."""

    def check(self, spec: str, option: str) -> None:
        """Raise ConfigError (naming `option`) for a spec this source cannot take."""
        ...

    def prepare(self, spec: str, context: PrepareContext, folder: Path) -> bool:
        """Write the initial model of `spec` into `folder` (a saved model folder) when it
        needs more than the spec to be built; False (nothing written) when `build` needs
        no template."""
        ...

    def build(
        self,
        spec: str,
        meta: DatasetMeta,
        stats: tuple[list[float], list[float]] | None = None,
        template: Path | None = None,
        option: str = "--student",
    ) -> nn.Module:
        """A fresh, untrained model for samples and classes of `meta`. `stats` are the
        training split's per-input mean and std, for a model that normalises its inputs
        itself (the zoo's do; a pretrained model keeps its own preprocessing). `template`
        is the folder `prepare` wrote, for sources that need one; `option` names where the
        spec came from in errors."""
        ...

    def fetch(
        self,
        spec: str,
        folder: Path,
        tracking_uri: str | None,
        context: PrepareContext | None = None,
    ) -> Path:
        """Copy an existing model into `folder` (a saved model folder), checked against the
        data of `context` where the source can; ConfigError for a source whose models are
        built, not fetched."""
        ...

    def save(
        self, model: nn.Module, folder: Path, meta: DatasetMeta, extra: dict[str, Any]
    ) -> Path:
        """Write weights (safetensors) and spec.json; `extra` goes into the spec."""
        ...

    def load(self, folder: Path) -> tuple[nn.Module, dict[str, Any]]:
        """The model saved in `folder`, in eval mode, and its spec."""
        ...

    def layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """The model's layers by name, as feature distillation names them."""
        ...

    def head(self, model: nn.Module) -> nn.Module:
        """The classifier head, whose input is the penultimate features."""
        ...

    def attention_maps(self, model: nn.Module) -> list[nn.Module]:
        """One module per self-attention layer, in depth order, whose output is that
        layer's attention maps (B × heads × L × L); empty when it has none."""
        ...

    def tokens_last(self, model: nn.Module) -> bool:
        """Whether 3-D activations are B × L × D (tokens) rather than B × C × L."""
        ...


@dataclass
class PrepareContext:
    """What `ModelSource.prepare` may use besides the spec."""

    data: DataSource
    """The prepared dataset (a fresh tokenizer trains on its training split)."""
    seed: int = 0
    """The seed of the initial weights."""
    teacher: str | None = None
    """The first teacher's saved folder (local or s3://), for `hf-from-teacher:`."""
    trust_remote_code: bool = False
    """Whether a fetched model may run code of its own (`--trust-remote-code`)."""
    option: str = "--student"
    """The option the spec came from, for error messages."""
    vocab_size: int = 0
    """--vocab-size: the BPE a fresh causal LM trains on the corpus (0: sized to it)."""


SOURCES: dict[str, str] = {
    "models:/": "kdflow.mlflow.source:RegisteredModels",
    "hf:": "kdflow.models.hf_source:Pretrained",
    "hf-config:": "kdflow.models.hf_source:FromConfig",
    "hf-from-teacher:": "kdflow.models.hf_source:FromTeacher",
    "python:": "kdflow.models.python_source:PythonFactory",
    "": "kdflow.models.zoo_source:Zoo",
}
"""Spec prefix -> the source class, as `module:Class` (longest prefix first wins)."""

KINDS: dict[str, str] = {"zoo": "", "hf": "hf:", "python": "python:"}
"""A saved model's `kind` -> the prefix of the source that loads it."""


def source_for(spec: str) -> ModelSource:
    """The source of a spec, by its prefix."""
    for prefix in sorted(SOURCES, key=len, reverse=True):
        if spec.startswith(prefix):
            return _instance(prefix)
    raise ConfigError(f"no model source takes {spec!r}")  # unreachable: "" matches all


def source_of_folder(spec: dict[str, Any], where: str) -> ModelSource:
    """The source that loads a saved model, by the `kind` its spec.json records."""
    kind = str(spec.get("kind", "zoo"))
    if kind not in KINDS:
        raise ConfigError(
            f"{where}: a model of kind {kind!r}; this kdflow loads {', '.join(sorted(KINDS))}"
        )
    return _instance(KINDS[kind])


_LOADED: dict[str, ModelSource] = {}


def _instance(prefix: str) -> ModelSource:
    if prefix not in _LOADED:
        module, _, name = SOURCES[prefix].partition(":")
        _LOADED[prefix] = getattr(importlib.import_module(module), name)()
    return _LOADED[prefix]


def load_saved(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load a saved model folder through the source that saved it."""
    from kdflow.models.artifacts import read_spec

    spec = read_spec(folder)
    return source_of_folder(spec, str(folder)).load(Path(folder))


def build(
    spec: str,
    meta: DatasetMeta,
    stats: tuple[list[float], list[float]] | None = None,
    option: str = "--student",
    template: Path | None = None,
) -> nn.Module:
    """A fresh model of `spec` for the data of `meta` (see `ModelSource.build`)."""
    source = source_for(spec)
    source.check(spec, option)
    return source.build(spec, meta, stats, template, option)


LEARNING_RATES: dict[str, dict[str, float]] = {
    "": {"teacher": 1e-3, "student": 3e-3},
    "python:": {"teacher": 1e-3, "student": 3e-3},
    "hf-config:": {"teacher": 3e-4, "student": 3e-4},
    "hf-from-teacher:": {"teacher": 3e-4, "student": 3e-4},
    "hf:": {"teacher": 5e-5, "student": 5e-5},
}
"""Adam's default learning rate by spec prefix and role, when --teacher-lr / --student-lr
are not given. The zoo's small networks take 1e-3 (teachers) and 3e-3 (students).
Transformers diverge there: a BERT trained from scratch at 1e-3 collapsed onto the majority
class of the Rotten Tomatoes snippets (benchmarks/text.py), where 3e-4 learns; so fresh
ones take 3e-4, and a pretrained folder is fine-tuned at 5e-5 (Devlin et al. 2019 fine-tune
BERT at 2e-5 to 5e-5)."""

IMAGE_LEARNING_RATES: dict[str, float] = {"hf-config:": 1e-3, "hf-from-teacher:": 1e-3}
"""Fresh transformers vision models on image data, both roles. 3e-4 is too slow for them: on
scikit-learn's digits scaled to 28×28 (30 epochs, Adam, cosine), validation accuracy at
3e-4 / 1e-3 / 3e-3 was resnet 0.914 / 0.982 / 0.996, vit 0.825 / 0.890 / 0.937, convnext
0.951 / 0.975 / 0.976, mobilenet_v2 0.886 / 0.973 / 0.976; 1e-3 is near the best for each,
and larger models want lower rates rather than higher."""


def learning_rate(spec: str, role: str, given: float | None, kind: str = "columns") -> float:
    """`given`, or the default of `spec`'s source for `role` (`teacher`, else a student) on
    data of `kind`."""
    if given is not None:
        return given
    prefix = max((p for p in LEARNING_RATES if spec.startswith(p)), key=len)
    if kind == "image" and prefix in IMAGE_LEARNING_RATES:
        return IMAGE_LEARNING_RATES[prefix]
    return LEARNING_RATES[prefix]["teacher" if role == "teacher" else "student"]


def encoder_of(model: nn.Module) -> Encoder | None:
    """How `model` turns raw rows into its inputs (a tokenizer), or None for a model that
    reads numeric columns as they are."""
    encoder = getattr(model, "encoder", None)
    return encoder if callable(getattr(encoder, "encode", None)) else None
