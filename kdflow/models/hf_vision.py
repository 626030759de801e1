"""Hugging Face transformers image classifiers as kdflow models: the wrapper the loop
trains, the preprocessing it carries, and the saved folder.

Every kdflow model takes an image batch as the data holds it: N × C × H × W pixel values
0-255 (uint8, or float32 after augmentation). `HfImageClassifier` wraps an
`AutoModelForImageClassification` (ResNet, ViT, MobileNetV2, ConvNeXt, any type of
transformers' MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES) and does the image processor's
work inside `forward`, so the exported ONNX graph and the registered pyfunc take the same
raw pixels and no preprocessing can drift between training and serving:

1. scale: `x.float() * scale` (1/255, or 1 for a processor with `do_rescale` off);
2. resize: bilinear with antialiasing (`F.interpolate(antialias=True)`, which PIL's
   bilinear resize also does when shrinking; torch.onnx's exporter handles it, to Resize
   with `antialias=1` at opset 18) to the processor's size, only where it differs from the
   data's; then the processor's centre crop, if it has one (ConvNeXt's `crop_pct`);
3. channels: one gray channel into a three-channel model is repeated; three channels
   into a one-channel model are averaged with ITU-R 601 luma weights, as Pillow's `L`
   conversion (the one `kdflow.data.images` decodes gray images with) does;
4. normalise: `(x - mean) / std`, per model channel, on the scaled (0-1) values.

The normalisation comes from the training data for a fresh model (`hf-config:`: the
per-channel mean and std of the training split's pixels), from the folder's
`preprocessor_config.json` for a pretrained one (`hf:`), or ImageNet-neutral 0.5/0.5 when
the folder has none. `mean`, `std`, `scale`, `image_size` (what the model sees, H, W) and
`resize_size` (before the crop) are buffers, so checkpoints carry them.

For the hints, `hidden.i` taps the model's i-th hidden state (`output_hidden_states`: the
embeddings' output, then each stage's or layer's) and `attention.i` layer i's attention
maps (ViT-like models only), as `kdflow.models.hf.HfClassifier` does for text; the head is
the last Linear to the classes. A saved folder is `save_pretrained`'s (config.json,
model.safetensors), a `preprocessor_config.json` any transformers `AutoImageProcessor`
reads back (a ViT/DeiT processor: PIL, no torchvision), `preprocess.safetensors` (the
buffers, exact, and under the spec's SHA-256) and kdflow's spec.json (kind `hf`, task
`image`; `inputs`, `image_size` and `channels` of the data, as every image model records
them, and `preprocessing` of the network's own input). Nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kdflow.data.images import image_spec
from kdflow.data.prepared import DatasetMeta
from kdflow.errors import ConfigError, ModelFormatError
from kdflow.models.hf import (
    HfTapped,
    checked_spec,
    save_labelled,
    spec_head,
    write_spec,
)
from kdflow.models.image_processing import (
    PREPROCESS,
    Preprocessing,
    _pair,
    _per_channel,
    config_size,
    processor_config,
    saved_preprocessing,
)

log = logging.getLogger(__name__)

TASK = "image"
LUMA = (0.299, 0.587, 0.114)
"""ITU-R 601 luma weights: RGB to gray as Pillow's `L` conversion."""
MIN_PATCHES = 7
"""Patches per side a fresh ViT's default patch size leaves at least (7 on 28 px)."""


def image_types() -> frozenset[str]:
    """Model types transformers has an image classifier of."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    return frozenset(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)


def text_types() -> frozenset[str]:
    """Model types transformers has a sequence (text) classifier of."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    return frozenset(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)


EXAMPLE_IMAGE_TYPES = ("vit", "resnet", "convnext", "mobilenet_v2", "deit", "swin")


def type_reads(model_type: str) -> str:
    """Which data a model type reads, for error messages: `images`, `text`, or both."""
    images, texts = model_type in image_types(), model_type in text_types()
    return "images or text" if images and texts else "images" if images else "text"


def check_type_for(model_type: str, kind: str, spec: str, option: str) -> None:
    """ConfigError when `model_type` has no classifier for data of `kind` (`image` reads
    AutoModelForImageClassification types, `text` AutoModelForSequenceClassification ones)."""
    wanted = image_types() if kind == "image" else text_types()
    if model_type in wanted:
        return
    if kind == "image":
        examples = ", ".join(t for t in EXAMPLE_IMAGE_TYPES if t in wanted)
        raise ConfigError(
            f"{option}: {spec}: {model_type} reads {type_reads(model_type)}, this data is "
            f"images; image data takes a type with an image classifier ({examples}, ...)",
            option=option,
        )
    raise ConfigError(
        f"{option}: {spec}: {model_type} reads {type_reads(model_type)}, this data is "
        f"{kind}; text data takes a type with a sequence classifier (bert, distilbert, "
        "roberta, ...)",
        option=option,
    )


def folder_reads_images(config: dict[str, Any]) -> bool | None:
    """Whether a pretrained folder's config.json is an image classifier (True), a text one
    (False), or either (None: a type with both, such as perceiver; the data decides)."""
    architectures = [str(a) for a in config.get("architectures") or []]
    if any(a.endswith("ForImageClassification") for a in architectures):
        return True
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return False
    model_type = str(config.get("model_type", ""))
    images, texts = model_type in image_types(), model_type in text_types()
    return None if images == texts else images


# ----------------------------------------------------------------------- the fresh model


def patch_default(height: int, width: int, given: int = 16) -> int:
    """A ViT patch size for H × W images: `given` (the config's default) when it divides
    both and leaves MIN_PATCHES per side, else the largest such size up to 16 (4 on 28 or
    32 px, 16 on 224), else 1."""
    def fits(p: int) -> bool:
        return height % p == 0 and width % p == 0 and min(height, width) // p >= MIN_PATCHES

    if given > 0 and fits(given):
        return given
    return next((p for p in range(16, 0, -1) if fits(p)), 1)


def config_defaults(
    default: Any, shape: Sequence[int], classes: Sequence[str], overrides: dict[str, Any]
) -> dict[str, Any]:
    """A fresh config's values that come from the data: channels, image size (where the
    config has one), a patch size that divides it (ViT-like) and the class names; the
    spec's own overrides win over all but the labels."""
    channels, height, width = (int(v) for v in shape)
    values: dict[str, Any] = {}
    if hasattr(default, "num_channels"):
        values["num_channels"] = channels
    if hasattr(default, "image_size"):
        values["image_size"] = height if height == width else [height, width]
    if hasattr(default, "patch_size") and "patch_size" not in overrides:
        size = _pair(overrides.get("image_size", values.get("image_size")), (height, width))
        patch = default.patch_size
        if isinstance(patch, int):
            values["patch_size"] = patch_default(size[0], size[1], patch)
    return values | overrides | labels_of(classes)


def labels_of(classes: Sequence[str]) -> dict[str, Any]:
    """id2label and label2id of the data's class names."""
    return {
        "id2label": {i: str(c) for i, c in enumerate(classes)},
        "label2id": {str(c): i for i, c in enumerate(classes)},
    }


# --------------------------------------------------------------- a pretrained processor


# ---------------------------------------------------------------------------- the model


class HfImageClassifier(HfTapped):
    """A transformers image classifier that takes kdflow's raw pixels (N × C × H × W,
    0-255) and preprocesses them itself (see the module's docstring)."""

    mean: torch.Tensor
    std: torch.Tensor
    scale: torch.Tensor
    image_size: torch.Tensor
    resize_size: torch.Tensor

    def __init__(
        self, model: Any, input_shape: Sequence[int], prep: Preprocessing, source: str
    ) -> None:
        super().__init__()
        self.hf = model
        self.spec = source
        self.n_classes = int(model.config.num_labels)
        self.input_shape = [int(v) for v in input_shape]
        self.channels = int(getattr(model.config, "num_channels", 3) or 3)
        _check_channels(self.input_shape[0], self.channels, source)
        mean = _per_channel(prep.mean, self.channels, "mean")
        std = _per_channel(prep.std, self.channels, "std")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(prep.scale, dtype=torch.float32))
        self.register_buffer("image_size", torch.tensor(prep.size, dtype=torch.int64))
        self.register_buffer("resize_size", torch.tensor(prep.resize, dtype=torch.int64))
        # Python ints for the forward: shapes must be constants for torch.export.
        self.size_hw = (int(prep.size[0]), int(prep.size[1]))
        self.resize_hw = (int(prep.resize[0]), int(prep.resize[1]))
        hidden, attention, tokens = self._probe()
        self.make_taps(hidden, attention)
        self.tokens_last = tokens

    @property
    def preprocessing(self) -> Preprocessing:
        """The preprocessing the buffers hold (what the saved folder records)."""
        return Preprocessing(
            [float(v) for v in self.mean.tolist()],
            [float(v) for v in self.std.tolist()],
            self.size_hw,
            self.resize_hw,
            float(self.scale.item()),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(pixel_values=self.pixel_values(x))

    def pixel_values(self, x: torch.Tensor) -> torch.Tensor:
        """Raw pixels (N × C × H × W, 0-255; or flat N × C·H·W rows, as a zoo-style probe
        passes) as the model's `pixel_values`."""
        if x.dim() == 2:
            x = x.reshape(x.shape[0], *self.input_shape)
        x = x.float() * self.scale
        if tuple(x.shape[-2:]) != self.resize_hw:
            x = F.interpolate(
                x, size=self.resize_hw, mode="bilinear", align_corners=False, antialias=True
            )
        if self.resize_hw != self.size_hw:  # the processor's centre crop
            top = (self.resize_hw[0] - self.size_hw[0]) // 2
            left = (self.resize_hw[1] - self.size_hw[1]) // 2
            x = x[..., top : top + self.size_hw[0], left : left + self.size_hw[1]]
        x = self._adapted(x)
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def _adapted(self, x: torch.Tensor) -> torch.Tensor:
        """The model's channels from the data's: gray repeated, RGB to luma."""
        given = int(x.shape[1])
        if given == self.channels:
            return x
        if given == 1:
            return x.expand(-1, self.channels, -1, -1)
        if given == 3 and self.channels == 1:
            return (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        raise ModelFormatError(
            f"{self.spec}: images of {given} channels for a {self.channels}-channel model"
        )

    def _probe(self) -> tuple[int, int, bool]:
        """(hidden states, attention maps, whether hidden states are tokens) of one
        forward pass on a blank image of the model's size: how many taps it needs, and a
        check that it runs at that size (a ViT runs only at its own)."""
        was_training = self.hf.training
        self.hf.eval()
        device = next(self.hf.parameters()).device
        x = torch.zeros(1, self.channels, *self.size_hw, device=device)
        try:
            with torch.no_grad():
                out = self.hf(pixel_values=x, output_hidden_states=True)
                hidden = tuple(getattr(out, "hidden_states", None) or ())
                tokens = bool(hidden) and hidden[-1].dim() == 3
                maps = self._attention_maps(x) if tokens else 0
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            h, w = self.size_hw
            raise ModelFormatError(
                f"{self.spec}: the model does not run on {self.channels}×{h}×{w} images: "
                f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc}"
            ) from exc
        finally:
            self.hf.train(was_training)
        return len(hidden), maps, tokens

    def _attention_maps(self, x: torch.Tensor) -> int:
        """How many attention maps the model returns (eager attention: sdpa returns none),
        its attention implementation restored afterwards."""
        before = getattr(self.hf.config, "_attn_implementation", None)
        try:
            if before != "eager":
                self.hf.set_attn_implementation("eager")
            out = self.hf(pixel_values=x, output_attentions=True)
        except (ValueError, TypeError, AttributeError):
            return 0  # no eager attention: no maps to distil
        finally:
            if before and before != "eager":
                self.hf.set_attn_implementation(before)
        return len(getattr(out, "attentions", None) or ())

    def example_input(self, rows: int = 2) -> torch.Tensor:
        """A valid batch (for probing layer shapes): fixed random uint8 pixels."""
        generator = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (rows, *self.input_shape), generator=generator,
                          dtype=torch.uint8)
        return x.to(next(self.parameters()).device)

    def flops(self) -> int:
        """FLOPs of one image as `kdflow.models.zoo.flops` counts them (convolutions and
        matrix products; the resize and normalisation are not counted)."""
        from kdflow.models.zoo import flops

        return flops(self, self.input_shape)


def _check_channels(data: int, model: int, spec: str) -> None:
    if data != model and data != 1 and not (data == 3 and model == 1):
        raise ConfigError(
            f"{spec}: a {model}-channel model cannot read {data}-channel images (kdflow "
            "repeats a gray channel into three and turns three into gray, no more)"
        )


def with_fitting_size(
    model: Any, input_shape: Sequence[int], prep: Preprocessing, source: str
) -> HfImageClassifier:
    """The wrapper at `prep`'s size, or at the config's image size when the model runs
    only at that one (a ViT without a processor config), said so."""
    try:
        return HfImageClassifier(model, input_shape, prep, source)
    except ModelFormatError:
        size = config_size(model.config)
        if size is None or size == prep.size:
            raise
        log.info("%s: resizing the images to the model's image_size %s", source, size)
        return HfImageClassifier(
            model, input_shape, Preprocessing(prep.mean, prep.std, size, size, prep.scale), source
        )


# --------------------------------------------------------------------------- the folder


def save_hf_image(
    model: HfImageClassifier, folder: Path, meta: DatasetMeta, extra: dict[str, Any]
) -> Path:
    """`save_pretrained` of the model with the data's class names as its labels, its
    preprocessing (preprocessor_config.json and preprocess.safetensors), and spec.json:
    what every image model's spec records of the data (`kdflow.data.images.image_spec`:
    `image_size` and `channels` are the data's, what serving decodes to) and the
    preprocessing inside the model (`preprocessing.size`: what the network sees)."""
    from safetensors.torch import save_file

    config = save_labelled(model, folder, meta.classes)
    prep = model.preprocessing
    (folder / "preprocessor_config.json").write_text(json.dumps(processor_config(prep), indent=2))
    buffers = {
        name: getattr(model, name).detach().cpu().contiguous()
        for name in ("mean", "std", "scale", "image_size", "resize_size")
    }
    save_file(buffers, str(folder / PREPROCESS), metadata={"format": "pt"})
    spec = {
        **spec_head(model, config, TASK),
        "n_features": math.prod(model.input_shape),
        "n_classes": model.n_classes,
        "class_names": [str(c) for c in meta.classes],
        "feature_names": [],
        "text_columns": [],
        **image_spec(meta),
        "preprocessing": {
            "size": list(prep.size),
            "resize": list(prep.resize),
            "scale": prep.scale,
            "mean": list(prep.mean),
            "std": list(prep.std),
            "channels": model.channels,
        },
        "source": model.spec,
    }
    return write_spec(folder, spec, extra)


def load_hf_image(folder: Path, train: bool = False) -> tuple[HfImageClassifier, dict[str, Any]]:
    """A saved folder as an `HfImageClassifier` (eval mode unless `train`), weights checked."""
    from transformers import AutoModelForImageClassification

    spec = checked_spec(folder)
    remote = bool(spec.get("trust_remote_code", False))
    try:
        model = AutoModelForImageClassification.from_pretrained(
            folder, use_safetensors=True, trust_remote_code=remote
        )
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{folder}: not a loadable transformers folder: {exc}") from exc
    shape = [int(v) for v in spec["input_shape"]]
    channels = int(getattr(model.config, "num_channels", 3) or 3)
    prep = saved_preprocessing(folder, channels, (shape[1], shape[2]))
    wrapped = HfImageClassifier(model, shape, prep, str(spec.get("source", "")))
    wrapped.train(train)
    return wrapped, spec
