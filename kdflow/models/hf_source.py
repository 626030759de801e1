"""Hugging Face transformers as model sources, for text and image classification:

- `hf:LOCATION`: a pretrained `save_pretrained` folder (local, `s3://bucket/prefix`, or a
  hub id `org/name` where the hub is reachable; `HF_HUB_OFFLINE` is honoured), loaded with
  `AutoModelForSequenceClassification` on text data, `AutoModelForImageClassification`
  (and the folder's preprocessor_config.json: size, crop, mean, std) on image data. Used
  as it is (`--teacher-epochs 0`) or fine-tuned.
- `hf-config:MODEL_TYPE:key=value,...`: a fresh model from `AutoConfig.for_model`; on text
  with a WordPiece tokenizer trained on the training split (`tokenizers`), saved with it;
  on images with the data's channels, size and classes (a ViT's patch size divides the
  size: 4 on 28 or 32 px) and the training pixels' per-channel mean and std. A value
  with dashes is a list of numbers (`hidden_sizes=32-64,depths=1-1`).
- `hf-from-teacher:key=value,...`: the first teacher's config with these overrides (and
  its tokenizer, or its image preprocessing), initialised from the teacher's weights
  where shapes match; a transformer's layers taken evenly (every other one at half the
  depth: DistilBERT, Sanh et al. 2019), a CNN's blocks by name (stage s, block b from the
  teacher's stage s, block b: `depths=1-1` keeps each stage's first blocks).

Which data a model type reads is transformers' own: image data takes the types of
MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, text data those of
MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES; `kdflow.models.hf_vision` has the image
wrapper.

Each writes its initial model once, on the driver (`prepare`); every role and worker
builds from that folder. Weights are safetensors only: a folder with only
`pytorch_model.bin` is refused, and `trust_remote_code` is off unless asked for.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdflow.data import storage
from kdflow.data.prepared import DatasetMeta
from kdflow.errors import ConfigError, ModelFormatError
from kdflow.models import hf_lm
from kdflow.models.hf import (
    DEFAULT_VOCAB,
    KIND,
    SPEC,
    HfClassifier,
    HfTapped,
    copy_from_teacher,
    evenly_spaced,
    load_hf,
    save_hf,
    train_wordpiece,
)
from kdflow.models.hf_config import (
    _split_type,
    checked_overrides,
    config_for,
    make_config,
    parse_overrides,
)
from kdflow.models.hf_folders import checked_folder, is_local, located
from kdflow.models.hf_folders import short as _short
from kdflow.models.hf_vision import (
    TASK,
    HfImageClassifier,
    check_type_for,
    config_defaults,
    folder_reads_images,
    labels_of,
    load_hf_image,
    save_hf_image,
    with_fitting_size,
)
from kdflow.models.image_processing import (
    Preprocessing,
    channel_stats,
    fresh_preprocessing,
    processor_preprocessing,
    read_processor,
)
from kdflow.models.sources import PrepareContext

log = logging.getLogger(__name__)



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
        _needs_text_or_images(spec, meta, option)
        if template is None:
            raise ConfigError(f"{spec}: a transformers model is built from its prepared folder")
        model, saved = load_any(template, train=True)
        reads = {"causal-lm": "corpus"}.get(str(saved.get("task", "text")), saved.get("task"))
        if reads != meta.kind:
            raise ConfigError(
                f"{option}: {spec}: the prepared model reads {reads}; this data is {meta.kind}",
                option=option,
            )
        return self._for_data(model, meta, stats)

    def _for_data(
        self, model: HfTapped, meta: DatasetMeta, stats: tuple[list[float], list[float]] | None
    ) -> nn.Module:
        """The built model adjusted to the training statistics (the fresh ones only)."""
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
        if isinstance(model, HfImageClassifier):
            return save_hf_image(model, folder, meta, extra)
        if isinstance(model, hf_lm.HfCausalLM):
            return hf_lm.save_lm(model, folder, meta.text_columns, extra)
        assert isinstance(model, HfClassifier)
        return save_hf(model, folder, meta.classes, meta.text_columns, extra)

    def load(self, folder: Path) -> tuple[nn.Module, dict[str, Any]]:
        return load_any(folder)

    def layers(self, model: nn.Module) -> dict[str, nn.Module]:
        assert isinstance(model, HfTapped)
        named = {k: m for k, m in model.named_modules() if k}
        named |= {f"hidden.{i}": t for i, t in enumerate(model.hidden_taps)}
        named |= {f"attention.{i}": t for i, t in enumerate(model.attention_taps)}
        return named

    def head(self, model: nn.Module) -> nn.Module:
        assert isinstance(model, HfTapped)
        return model.head()

    def attention_maps(self, model: nn.Module) -> list[nn.Module]:
        assert isinstance(model, HfTapped)
        return list(model.attention_taps)

    def tokens_last(self, model: nn.Module) -> bool:
        """True for text and ViT-like models (B × L × D), False for CNNs."""
        return bool(getattr(model, "tokens_last", True))

    def _write(self, model: Any, tokenizer: Any, context: PrepareContext, spec: str,
               folder: Path, extra: dict[str, Any] | None = None) -> None:
        meta = context.data.meta
        wrapped = HfClassifier(model, tokenizer, meta.max_length, spec)
        save_hf(wrapped, folder, meta.classes, meta.text_columns, extra or {})

    def _write_image(self, model: Any, prep: Preprocessing, context: PrepareContext, spec: str,
                     folder: Path, extra: dict[str, Any] | None = None) -> None:
        meta = context.data.meta
        try:
            wrapped = with_fitting_size(model, meta.input_shape, prep, spec)
        except (ConfigError, ModelFormatError) as exc:
            raise ConfigError(f"{context.option}: {exc}", option=context.option) from exc
        save_hf_image(wrapped, folder, meta, extra or {})


def load_any(folder: Path, train: bool = False) -> tuple[Any, dict[str, Any]]:
    """A saved transformers folder, text, image or causal LM by its spec.json's task."""
    task = json.loads((folder / SPEC).read_text()).get("task", "text")
    if task == TASK:
        return load_hf_image(folder, train)
    if task == hf_lm.TASK:
        return hf_lm.load_lm(folder, train)
    return load_hf(folder, train)


def _needs_text_or_images(spec: str, meta: DatasetMeta, option: str = "--student") -> None:
    if meta.kind not in ("text", "image", "corpus"):
        raise ConfigError(
            f"{option}: {spec} classifies text or images; this data has numeric columns (give "
            "--text-column for text data, image files for images, or a zoo model such as "
            "mlp:hidden=64)",
            option=option,
        )


class FromConfig(_Hf):
    """`hf-config:MODEL_TYPE:key=value,...`"""

    def check(self, spec: str, option: str) -> None:
        """The type, the keys and their values' types (built once without the data)."""
        model_type, rest = _split_type(spec, option)
        config_for(model_type, parse_overrides(rest, spec, option), spec, option)

    def prepare(self, spec: str, context: PrepareContext, folder: Path) -> bool:
        meta = context.data.meta
        _needs_text_or_images(spec, meta, context.option)
        if meta.kind == "corpus":
            hf_lm.prepare_fresh(spec, context, folder)
            return True
        model_type, _ = _split_type(spec, context.option)
        check_type_for(model_type, meta.kind, spec, context.option)
        if meta.kind == "image":
            self._prepare_image(spec, context, folder)
        else:
            self._prepare_text(spec, context, folder)
        return True

    def _prepare_text(self, spec: str, context: PrepareContext, folder: Path) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        meta = context.data.meta
        model_type, rest = _split_type(spec, context.option)
        config = config_for(model_type, parse_overrides(rest, spec, context.option), spec,
                            context.option)
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

    def _prepare_image(self, spec: str, context: PrepareContext, folder: Path) -> None:
        """A fresh image classifier for the data's channels, size and classes, normalised
        with the training pixels' statistics."""
        import torch
        from transformers import CONFIG_MAPPING, AutoModelForImageClassification

        meta, option = context.data.meta, context.option
        model_type, rest = _split_type(spec, option)
        overrides = checked_overrides(model_type, parse_overrides(rest, spec, option), spec,
                                      option)
        values = config_defaults(CONFIG_MAPPING[model_type](), meta.input_shape, meta.classes,
                                 overrides)
        config = make_config(model_type, values, spec, option)
        torch.manual_seed(context.seed)
        model = AutoModelForImageClassification.from_config(config)
        prep = fresh_preprocessing(config, meta.input_shape, context.data.input_stats())
        self._write_image(model, prep, context, spec, folder)

    def _for_data(
        self, model: HfTapped, meta: DatasetMeta, stats: tuple[list[float], list[float]] | None
    ) -> nn.Module:
        """A fresh image model normalises with the statistics it is built with (those its
        template was prepared with, when the training split is the same)."""
        if isinstance(model, HfImageClassifier) and stats is not None:
            mean, std = channel_stats(stats, meta.input_shape)
            if len(mean) == model.channels:
                model.mean.copy_(torch.tensor(mean))
                model.std.copy_(torch.tensor(std))
        return model


class FromTeacher(_Hf):
    """`hf-from-teacher:key=value,...`"""

    def check(self, spec: str, option: str) -> None:
        parse_overrides(spec.removeprefix("hf-from-teacher:"), spec, option)

    def prepare(self, spec: str, context: PrepareContext, folder: Path) -> bool:
        option = context.option
        _needs_text_or_images(spec, context.data.meta, option)
        if context.teacher is None:
            raise ConfigError(f"{option}: {spec} needs a teacher to start from", option=option)
        if context.data.meta.kind == "corpus":
            hf_lm.prepare_from_teacher(spec, context, folder)
            return True
        with storage.local_dir(context.teacher) as teacher_dir:
            saved = json.loads((teacher_dir / "spec.json").read_text())
            if saved.get("kind") != KIND:
                raise ConfigError(
                    f"{option}: hf-from-teacher needs the first teacher to be a transformers "
                    f"model (hf:, hf-config:); it is {saved.get('source') or saved['model']}",
                    option=option,
                )
            teacher, _ = load_any(teacher_dir)
        overrides = parse_overrides(spec.removeprefix("hf-from-teacher:"), spec, option)
        reads = TASK if isinstance(teacher, HfImageClassifier) else "text"
        if reads != context.data.meta.kind:
            raise ConfigError(f"{option}: {spec}: the teacher reads {reads}; this data is "
                              f"{context.data.meta.kind}", option=option)
        if isinstance(teacher, HfImageClassifier):
            self._image_student(teacher, overrides, spec, context, folder)
        else:
            assert isinstance(teacher, HfClassifier)
            self._text_student(teacher, overrides, spec, context, folder)
        return True

    def _text_student(self, teacher: HfClassifier, overrides: dict[str, Any], spec: str,
                      context: PrepareContext, folder: Path) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        option = context.option
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

    def _image_student(self, teacher: HfImageClassifier, overrides: dict[str, Any], spec: str,
                       context: PrepareContext, folder: Path) -> None:
        """The teacher's config with the overrides, built whole (a CNN's stage names follow
        its depths), its weights where names and shapes match, and its preprocessing."""
        import torch
        from transformers import AutoModelForImageClassification

        option, meta = context.option, context.data.meta
        model_type = str(teacher.hf.config.model_type)
        overrides = checked_overrides(model_type, overrides, spec, option)
        derived = ("architectures", "transformers_version", "stage_names", "out_features",
                   "out_indices")
        values = {k: v for k, v in teacher.hf.config.to_dict().items() if k not in derived}
        config = make_config(model_type, values | overrides | labels_of(meta.classes), spec,
                             option)
        torch.manual_seed(context.seed)
        student = AutoModelForImageClassification.from_config(config)
        depth = int(getattr(config, "num_hidden_layers", 0) or 0)
        teacher_depth = int(getattr(teacher.hf.config, "num_hidden_layers", 0) or 0)
        picked = evenly_spaced(teacher_depth, depth) if depth and teacher_depth else None
        counts = copy_from_teacher(student, teacher.hf, picked)
        log.info("%s: %d tensors from the teacher (%s), %d fresh", spec, counts["copied"],
                 f"layers {picked}" if picked is not None else "blocks by name", counts["kept"])
        prep = teacher.preprocessing
        if "image_size" in overrides:
            size = fresh_preprocessing(config, meta.input_shape, None).size
            prep = Preprocessing(prep.mean, prep.std, size, size, prep.scale)
        self._write_image(student, prep, context, spec, folder,
                          {"from_teacher": {"layers": picked, **counts}})


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
        if not storage.is_remote(location) and is_local(location):
            # Which head the folder needs is the task's: checked again when it is imported.
            checked_folder(Path(location).expanduser(), spec, option, causal=True)

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
        option, meta = context.option, context.data.meta
        _needs_text_or_images(spec, meta, option)
        with located(spec, option) as where:
            if meta.kind == "corpus":
                checked_folder(where, spec, option, causal=True)
                hf_lm.prepare_pretrained(spec, context, folder, where)
                return
            config = checked_folder(where, spec, option)
            _check_reads(config, meta.kind, spec, option)
            differ = _new_head(config, meta, spec, option, fine_tune)
            kwargs: dict[str, Any] = {"use_safetensors": True,
                                      "trust_remote_code": context.trust_remote_code}
            if differ:
                kwargs |= {"num_labels": meta.n_classes, "ignore_mismatched_sizes": True}
            extra = {"trust_remote_code": context.trust_remote_code, "new_head": bool(differ)}
            if meta.kind == TASK:
                self._import_image(spec, context, folder, where, kwargs, extra)
            else:
                self._import_text(spec, context, folder, where, kwargs, extra)

    def _import_text(self, spec: str, context: PrepareContext, folder: Path, where: Path,
                     kwargs: dict[str, Any], extra: dict[str, Any]) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            model = AutoModelForSequenceClassification.from_pretrained(where, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(
                where, trust_remote_code=context.trust_remote_code
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{context.option}: {spec}: cannot load: {_short(exc)}",
                              option=context.option) from exc
        self._write(model, tokenizer, context, spec, folder, extra)

    def _import_image(self, spec: str, context: PrepareContext, folder: Path, where: Path,
                      kwargs: dict[str, Any], extra: dict[str, Any]) -> None:
        """An image classifier with its processor's size and normalisation (neutral 0.5 at
        the data's size without one, logged)."""
        from transformers import AutoModelForImageClassification

        option, meta = context.option, context.data.meta
        try:
            model = AutoModelForImageClassification.from_pretrained(where, **kwargs)
            processor = read_processor(where)
            channels = int(getattr(model.config, "num_channels", 3) or 3)
            hw = (int(meta.input_shape[1]), int(meta.input_shape[2]))
            if processor is None:
                log.info("%s: no %s: the data's size %s and mean/std 0.5", spec,
                         "preprocessor_config.json", hw)
                prep = Preprocessing([0.5] * channels, [0.5] * channels, hw, hw)
            else:
                prep = processor_preprocessing(processor, channels, hw)
        except (OSError, ValueError, KeyError, ModelFormatError) as exc:
            raise ConfigError(f"{option}: {spec}: cannot load: {_short(exc)}",
                              option=option) from exc
        if meta.input_shape[0] != channels:
            log.info("%s: %d-channel images into a %d-channel model (%s inside the model)",
                     spec, meta.input_shape[0], channels,
                     "gray repeated" if meta.input_shape[0] == 1 else "luma")
        self._write_image(model, prep, context, spec, folder, extra)


def _check_reads(config: dict[str, Any], kind: str, spec: str, option: str) -> None:
    """ConfigError for a text model on image data, or an image model on text data."""
    images = folder_reads_images(config)
    if images is None or images == (kind == TASK):
        return
    check_type_for(str(config.get("model_type", "?")), kind, spec, option)
    reads = "images" if images else "text"  # reached for a type with both classifiers
    raise ConfigError(f"{option}: {spec} classifies {reads}; this data is {kind}",
                      option=option)


def _new_head(config: dict[str, Any], meta: DatasetMeta, spec: str, option: str,
              fine_tune: bool) -> bool:
    """Whether the folder's labels differ from the data's classes (then a new head is
    trained, said so); ConfigError when they differ and the model is used as it is."""
    labels = _labels(config)
    differ = config.get("num_labels", len(labels) or 2) != meta.n_classes or bool(
        labels and not _default_labels(labels) and labels != meta.classes
    )
    if differ and not fine_tune:
        raise ConfigError(
            f"{option}: {spec} predicts {labels or config.get('num_labels')} but the "
            f"data's classes are {meta.classes}; fine-tune it (--teacher-epochs N) "
            "for a new head, or give a model trained on these labels",
            option=option,
        )
    if differ:
        log.warning("%s: labels %s differ from the data's %s: a new classification "
                    "head is trained", spec, labels, meta.classes)
    return differ


def _labels(config: dict[str, Any]) -> list[str]:
    id2label = config.get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))]


def _default_labels(labels: list[str]) -> bool:
    return all(label == f"LABEL_{i}" for i, label in enumerate(labels))
