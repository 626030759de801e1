"""Hugging Face transformers as model sources, for text classification:

- `hf:LOCATION`: a pretrained `save_pretrained` folder (local, `s3://bucket/prefix`, or a
  hub id `org/name` where the hub is reachable; `HF_HUB_OFFLINE` is honoured), loaded with
  `AutoModelForSequenceClassification`. Used as it is (`--teacher-epochs 0`) or fine-tuned.
- `hf-config:MODEL_TYPE:key=value,...`: a fresh model from `AutoConfig.for_model`, with a
  WordPiece tokenizer trained on the training split (`tokenizers`), saved with it.
- `hf-from-teacher:key=value,...`: the first teacher's config with these overrides and its
  tokenizer, initialised from the teacher's weights where shapes match, layers taken
  evenly (every other one at half the depth: DistilBERT, Sanh et al. 2019).

Each writes its initial model once, on the driver (`prepare`); every role and worker
builds from that folder. Weights are safetensors only: a folder with only
`pytorch_model.bin` is refused, and `trust_remote_code` is off unless asked for.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from kdflow.data import storage
from kdflow.data.prepared import DatasetMeta
from kdflow.errors import ConfigError
from kdflow.models.hf import (
    DEFAULT_VOCAB,
    KIND,
    HfClassifier,
    copy_from_teacher,
    evenly_spaced,
    load_hf,
    save_hf,
    train_wordpiece,
)
from kdflow.models.sources import PrepareContext

log = logging.getLogger(__name__)

CAUSAL = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
"""Architecture name endings of generative models: not classifiers."""


def parse_overrides(text: str, spec: str, option: str) -> dict[str, Any]:
    """`key=value,...` with values as JSON where they parse (numbers, true/false), else text."""
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, raw = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"{option}: {spec!r}: expected key=value, got {part!r}", option=option
            )
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    return values


def config_for(model_type: str, overrides: dict[str, Any], spec: str, option: str) -> Any:
    """A transformers config of `model_type` with `overrides`; unknown types and keys are
    errors (transformers itself would keep an unknown key silently)."""
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        known = ", ".join(t for t in ("bert", "distilbert", "roberta", "electra", "albert")
                          if t in CONFIG_MAPPING)
        raise ConfigError(
            f"{option}: {spec!r}: unknown model type {model_type!r} (e.g. {known})", option=option
        )
    default = CONFIG_MAPPING[model_type]()
    unknown = sorted(k for k in overrides if not hasattr(default, k))
    if unknown:
        raise ConfigError(
            f"{option}: {spec!r}: {model_type} configs have no {', '.join(unknown)}", option=option
        )
    for key, value in overrides.items():
        setattr(default, key, value)
    return default


class _Hf:
    """What the three transformers sources share: folders, layers, heads."""

    kind = KIND
    fetches = False

    def check(self, spec: str, option: str) -> None:
        raise NotImplementedError

    def build(
        self,
        spec: str,
        meta: DatasetMeta,
        stats: tuple[list[float], list[float]] | None = None,
        template: Path | None = None,
        option: str = "--student",
    ) -> nn.Module:
        _needs_text(spec, meta, option)
        if template is None:
            raise ConfigError(f"{spec}: a transformers model is built from its prepared folder")
        model, _ = load_hf(template, train=True)
        return model

    def fetch(
        self,
        spec: str,
        folder: Path,
        tracking_uri: str | None,
        context: PrepareContext | None = None,
    ) -> Path:
        raise ConfigError(f"{spec}: a fresh transformers model is built and trained, not fetched")

    def save(
        self, model: nn.Module, folder: Path, meta: DatasetMeta, extra: dict[str, Any]
    ) -> Path:
        assert isinstance(model, HfClassifier)
        return save_hf(model, folder, meta.classes, meta.text_columns, extra)

    def load(self, folder: Path) -> tuple[nn.Module, dict[str, Any]]:
        return load_hf(folder)

    def layers(self, model: nn.Module) -> dict[str, nn.Module]:
        assert isinstance(model, HfClassifier)
        named = {k: m for k, m in model.named_modules() if k}
        named |= {f"hidden.{i}": t for i, t in enumerate(model.hidden_taps)}
        named |= {f"attention.{i}": t for i, t in enumerate(model.attention_taps)}
        return named

    def head(self, model: nn.Module) -> nn.Module:
        assert isinstance(model, HfClassifier)
        return model.head()

    def attention_maps(self, model: nn.Module) -> list[nn.Module]:
        assert isinstance(model, HfClassifier)
        return list(model.attention_taps)

    def tokens_last(self, model: nn.Module) -> bool:
        return True

    def _write(self, model: Any, tokenizer: Any, context: PrepareContext, spec: str,
               folder: Path, extra: dict[str, Any] | None = None) -> None:
        meta = context.data.meta
        wrapped = HfClassifier(model, tokenizer, meta.max_length, spec)
        save_hf(wrapped, folder, meta.classes, meta.text_columns, extra or {})


def _needs_text(spec: str, meta: DatasetMeta, option: str = "--student") -> None:
    if meta.kind != "text":
        raise ConfigError(
            f"{option}: {spec} classifies text; this data has numeric columns (give "
            "--text-column for text data, or a zoo model such as mlp:hidden=64)",
            option=option,
        )


class FromConfig(_Hf):
    """`hf-config:MODEL_TYPE:key=value,...`"""

    def check(self, spec: str, option: str) -> None:
        self._config(spec, option)

    def _config(self, spec: str, option: str) -> Any:
        model_type, _, rest = spec.removeprefix("hf-config:").partition(":")
        if not model_type:
            raise ConfigError(
                f"{option}: {spec!r} names no model type; write hf-config:bert:hidden_size=128,...",
                option=option,
            )
        return config_for(model_type, parse_overrides(rest, spec, option), spec, option)

    def prepare(self, spec: str, context: PrepareContext, folder: Path) -> bool:
        import torch
        from transformers import AutoModelForSequenceClassification

        meta = context.data.meta
        _needs_text(spec, meta, context.option)
        config = self._config(spec, context.option)
        given = "vocab_size=" in spec
        texts = context.data.texts("train")
        tokenizer = train_wordpiece(
            (t for column in texts for t in column), config.vocab_size if given else DEFAULT_VOCAB
        )
        config.vocab_size = len(tokenizer)
        config.pad_token_id = tokenizer.pad_token_id
        config.num_labels = meta.n_classes
        if getattr(config, "max_position_embeddings", meta.max_length) < meta.max_length:
            raise ConfigError(
                f"{context.option}: {spec}: max_position_embeddings "
                f"{config.max_position_embeddings} < --max-length {meta.max_length}",
                option=context.option,
            )
        torch.manual_seed(context.seed)
        model = AutoModelForSequenceClassification.from_config(config)
        log.info("%s: WordPiece tokenizer of %d tokens trained on the training split", spec,
                 len(tokenizer))
        self._write(model, tokenizer, context, spec, folder)
        return True


class FromTeacher(_Hf):
    """`hf-from-teacher:key=value,...`"""

    def check(self, spec: str, option: str) -> None:
        parse_overrides(spec.removeprefix("hf-from-teacher:"), spec, option)

    def prepare(self, spec: str, context: PrepareContext, folder: Path) -> bool:
        import torch
        from transformers import AutoModelForSequenceClassification

        option = context.option
        _needs_text(spec, context.data.meta, option)
        if context.teacher is None:
            raise ConfigError(f"{option}: {spec} needs a teacher to start from", option=option)
        with storage.local_dir(context.teacher) as teacher_dir:
            saved = json.loads((teacher_dir / "spec.json").read_text())
            if saved.get("kind") != KIND:
                raise ConfigError(
                    f"{option}: hf-from-teacher needs the first teacher to be a transformers "
                    f"model (hf:, hf-config:); it is {saved.get('source') or saved['model']}",
                    option=option,
                )
            teacher, _ = load_hf(teacher_dir)
        overrides = parse_overrides(spec.removeprefix("hf-from-teacher:"), spec, option)
        config = config_for(teacher.hf.config.model_type, overrides, spec, option)
        for key, value in teacher.hf.config.to_dict().items():
            if key not in overrides and key not in ("architectures", "transformers_version"):
                setattr(config, key, value)
        torch.manual_seed(context.seed)
        student = AutoModelForSequenceClassification.from_config(config)
        depth = int(getattr(config, "num_hidden_layers", 0) or 0)
        teacher_depth = int(getattr(teacher.hf.config, "num_hidden_layers", 0) or 0)
        picked = evenly_spaced(teacher_depth, depth) if depth and teacher_depth else []
        counts = copy_from_teacher(student, teacher.hf, picked)
        log.info("%s: %d tensors from the teacher (layers %s), %d fresh", spec,
                 counts["copied"], picked, counts["kept"])
        self._write(student, teacher.encoder.tokenizer, context, spec, folder,
                    {"from_teacher": {"layers": picked, **counts}})
        return True


class Pretrained(_Hf):
    """`hf:LOCATION`"""

    fetches = True

    def check(self, spec: str, option: str) -> None:
        location = spec.removeprefix("hf:").strip()
        if not location:
            raise ConfigError(
                f"{option}: {spec!r} names no model; write hf:FOLDER, hf:s3://bucket/prefix "
                "or hf:org/name",
                option=option,
            )
        if not storage.is_remote(location) and _is_local(location):
            _checked_folder(Path(location).expanduser(), spec, option)

    def prepare(self, spec: str, context: PrepareContext, folder: Path) -> bool:
        """The pretrained model as the initial weights (a student, or a teacher to fine-tune):
        a new classification head when its labels differ from the data's, said so."""
        self._import(spec, context, folder, fine_tune=True)
        return True

    def fetch(
        self,
        spec: str,
        folder: Path,
        tracking_uri: str | None,
        context: PrepareContext | None = None,
    ) -> Path:
        if context is None:
            raise ConfigError(f"{spec}: fetching a transformers model needs the data")
        self._import(spec, context, folder, fine_tune=False)
        return folder

    def _import(self, spec: str, context: PrepareContext, folder: Path, fine_tune: bool) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        option, meta = context.option, context.data.meta
        _needs_text(spec, meta, option)
        with _located(spec, option) as where:
            config = _checked_folder(where, spec, option)
            labels = _labels(config)
            differ = config.get("num_labels", len(labels) or 2) != meta.n_classes or (
                labels and not _default_labels(labels) and labels != meta.classes
            )
            if differ and not fine_tune:
                raise ConfigError(
                    f"{option}: {spec} predicts {labels or config.get('num_labels')} but the "
                    f"data's classes are {meta.classes}; fine-tune it (--teacher-epochs N) "
                    "for a new head, or give a model trained on these labels",
                    option=option,
                )
            kwargs: dict[str, Any] = {"use_safetensors": True,
                                      "trust_remote_code": context.trust_remote_code}
            if differ:
                log.warning("%s: labels %s differ from the data's %s: a new classification "
                            "head is trained", spec, labels, meta.classes)
                kwargs |= {"num_labels": meta.n_classes, "ignore_mismatched_sizes": True}
            try:
                model = AutoModelForSequenceClassification.from_pretrained(where, **kwargs)
                tokenizer = AutoTokenizer.from_pretrained(
                    where, trust_remote_code=context.trust_remote_code
                )
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigError(f"{option}: {spec}: cannot load: {_short(exc)}",
                                  option=option) from exc
        self._write(model, tokenizer, context, spec, folder,
                    {"trust_remote_code": context.trust_remote_code, "new_head": bool(differ)})


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def _labels(config: dict[str, Any]) -> list[str]:
    id2label = config.get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))]


def _default_labels(labels: list[str]) -> bool:
    return all(label == f"LABEL_{i}" for i, label in enumerate(labels))


def _checked_folder(where: Path, spec: str, option: str) -> dict[str, Any]:
    """The folder's config.json, after the checks that need no model library."""
    if not where.is_dir():
        raise ConfigError(f"{option}: {spec}: no such folder {where}", option=option)
    if not (where / "config.json").is_file():
        raise ConfigError(
            f"{option}: {spec}: no config.json in {where}; give a folder written by "
            "save_pretrained",
            option=option,
        )
    if not list(where.glob("*.safetensors")):
        pickled = [p.name for p in where.glob("*.bin")] + [p.name for p in where.glob("*.pt")]
        hint = (
            f" (found {', '.join(pickled)}: pickled weights are never loaded; convert with "
            "`AutoModel.from_pretrained(folder).save_pretrained(folder)` where you trust them)"
            if pickled else ""
        )
        raise ConfigError(f"{option}: {spec}: no safetensors weights in {where}{hint}",
                          option=option)
    config: dict[str, Any] = json.loads((where / "config.json").read_text())
    architectures = config.get("architectures") or []
    if any(a.endswith(CAUSAL) for a in architectures):
        raise ConfigError(
            f"{option}: {spec} is a generative model ({architectures[0]}), not a text "
            "classifier; give a ...ForSequenceClassification model or an encoder to fine-tune",
            option=option,
        )
    return config


def _is_local(location: str) -> bool:
    """A path on this machine, rather than a hub id (`org/name`)."""
    return (
        Path(location).expanduser().exists()
        or location.startswith((".", "/", "~"))
        or location.count("/") != 1
    )


class _located:
    """The spec's folder on local disk: itself, a copy of an s3:// prefix, or a hub
    snapshot (honouring HF_HUB_OFFLINE); the copies are removed afterwards."""

    def __init__(self, spec: str, option: str) -> None:
        self.location, self.option, self.spec = spec.removeprefix("hf:"), option, spec
        self.tmp: str | None = None

    def __enter__(self) -> Path:
        location = self.location
        if storage.is_remote(location):
            self.tmp = tempfile.mkdtemp(prefix="kdflow-hf-")
            try:
                return storage.download_dir(location, Path(self.tmp))
            except Exception as exc:  # StorageError and the S3 client's own
                raise ConfigError(f"{self.option}: {self.spec}: {_short(exc)}",
                                  option=self.option) from exc
        if _is_local(location):
            return Path(location).expanduser()
        return self._hub(location)

    def _hub(self, repo: str) -> Path:
        from huggingface_hub import snapshot_download

        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        try:
            return Path(snapshot_download(
                repo, local_files_only=offline,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.bin"],
            ))
        except Exception as exc:  # the hub client raises many kinds; all mean "not here"
            where = "in the local hub cache (HF_HUB_OFFLINE is set)" if offline else "on the hub"
            raise ConfigError(
                f"{self.option}: {self.spec}: no folder {repo!r} here and not found {where}: "
                f"{_short(exc)}",
                option=self.option,
            ) from exc

    def __exit__(self, *exc: object) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
