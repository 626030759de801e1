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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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

log = logging.getLogger(__name__)

TASK = "image"
PROCESSOR = "preprocessor_config.json"
PREPROCESS = "preprocess.safetensors"
"""The wrapper's preprocessing buffers, beside save_pretrained's model.safetensors."""
NEUTRAL = 0.5
"""Mean and std of a folder without a processor config: ImageNet-neutral, pixels to ±1."""
LUMA = (0.299, 0.587, 0.114)
"""ITU-R 601 luma weights: RGB to gray as Pillow's `L` conversion."""
BILINEAR = 2
"""PIL's resample code for bilinear, recorded in the processor config kdflow writes."""
CONVNEXT_WARP = 384
"""ConvNeXt's processor resizes to the crop (`crop_pct`) below this size, warps above."""
MIN_PATCHES = 7
"""Patches per side a fresh ViT's default patch size leaves at least (7 on 28 px)."""


@dataclass
class Preprocessing:
    """What `HfImageClassifier.forward` does to the pixels before the model sees them."""

    mean: list[float]
    """Per model channel, on the scaled (0-1) values."""
    std: list[float]
    size: tuple[int, int]
    """H, W the model sees (after the crop)."""
    resize: tuple[int, int]
    """H, W the pixels are resized to before the centre crop (`size` when none)."""
    scale: float = 1 / 255


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


def channel_stats(
    stats: tuple[Sequence[float], Sequence[float]], shape: Sequence[int]
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the 0-1 scale from per-pixel ones in pixel units (the
    data source's `input_stats`, C·H·W each): the channel's mean is the mean of its
    pixels' means, its variance the mean of their variances plus the variance of their
    means (the law of total variance over the channel's pixels)."""
    channels = int(shape[0])
    mean = np.asarray(stats[0], np.float64) / 255.0
    std = np.asarray(stats[1], np.float64) / 255.0
    if mean.size != math.prod(shape) or std.size != mean.size:
        raise ConfigError(
            f"input statistics of {mean.size} values for images of shape "
            f"{'×'.join(map(str, shape))}; expected one per pixel"
        )
    mean, std = mean.reshape(channels, -1), std.reshape(channels, -1)
    total = np.sqrt((std * std).mean(1) + mean.var(1))
    total = np.where(total > 1e-6, total, 1.0)  # a constant channel: centre it only
    return mean.mean(1).tolist(), total.tolist()


def config_size(config: Any) -> tuple[int, int] | None:
    """The image size a config names (its own, or its vision tower's), or None."""
    size = getattr(config, "image_size", None)
    if size is None and getattr(config, "vision_config", None) is not None:
        size = getattr(config.vision_config, "image_size", None)
    return _pair(size, None) if size is not None else None


def fresh_preprocessing(
    config: Any, shape: Sequence[int], stats: tuple[Sequence[float], Sequence[float]] | None
) -> Preprocessing:
    """A fresh model's preprocessing: the config's image size (the data's unless the spec
    gives another) and the training pixels' per-channel mean and std (neutral without
    statistics)."""
    channels = int(getattr(config, "num_channels", shape[0]) or shape[0])
    size = config_size(config) or (int(shape[1]), int(shape[2]))
    if stats is None:
        mean, std = [NEUTRAL] * channels, [NEUTRAL] * channels
    else:
        mean, std = channel_stats(stats, shape)
        mean, std = _per_channel(mean, channels, "mean"), _per_channel(std, channels, "std")
    return Preprocessing(mean, std, size, size)


# --------------------------------------------------------------- a pretrained processor


def read_processor(folder: Path) -> dict[str, Any] | None:
    """A folder's preprocessor_config.json as JSON (read, never instantiated: the file's
    processor class may need torchvision, and its values are all kdflow uses), or None."""
    path = folder / PROCESSOR
    if not path.is_file():
        return None
    try:
        loaded = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{path}: not JSON ({exc})") from exc
    return loaded if isinstance(loaded, dict) else None


def processor_preprocessing(
    processor: dict[str, Any], channels: int, data_hw: tuple[int, int]
) -> Preprocessing:
    """The preprocessing of a transformers image processor config, for a model of
    `channels` and data of H × W: its size (`{"height", "width"}`, `{"shortest_edge"}`
    keeping the aspect ratio, `{"longest_edge"}`, or an int: square for ViT-like
    processors, the shortest edge for ConvNeXt/CLIP-like ones, as each class reads it),
    its centre crop (`do_center_crop` + `crop_size`, ConvNeXt's `crop_pct`), `do_rescale`
    (`rescale_factor`) and `do_normalize` (`image_mean`, `image_std`)."""
    resize, size = processor_geometry(processor, data_hw)
    rescale = bool(processor.get("do_rescale", True))
    scale = float(processor.get("rescale_factor", 1 / 255)) if rescale else 1.0
    if processor.get("do_normalize", True):
        mean = _per_channel(processor.get("image_mean", NEUTRAL), channels, "image_mean")
        std = _per_channel(processor.get("image_std", NEUTRAL), channels, "image_std")
    else:
        mean, std = [0.0] * channels, [1.0] * channels
    return Preprocessing(mean, std, size, resize, scale)


def processor_geometry(
    processor: dict[str, Any], data_hw: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(resize to, then centre crop to) of a processor config for H × W data."""
    if not processor.get("do_resize", True):
        resize = data_hw
        crop = None
    else:
        form, value = _size_form(processor)
        crop_pct = processor.get("crop_pct")
        crop = None
        if form == "exact":
            resize = (int(value[0]), int(value[1]))
        elif form == "longest":
            scale = int(value[0]) / max(data_hw)
            resize = (int(data_hw[0] * scale), int(data_hw[1] * scale))
        elif crop_pct and int(value[0]) < CONVNEXT_WARP:
            edge = int(value[0])
            resize = shortest_edge(int(edge / float(crop_pct)), data_hw)
            crop = (edge, edge)
        elif crop_pct:
            resize = (int(value[0]), int(value[0]))
        else:
            resize = shortest_edge(int(value[0]), data_hw)
    if processor.get("do_center_crop") and processor.get("crop_size") is not None:
        crop = _pair(processor["crop_size"], None)
    size = crop or resize
    if size[0] > resize[0] or size[1] > resize[1]:
        raise ModelFormatError(
            f"{PROCESSOR}: a centre crop of {size} from images resized to {resize}"
        )
    return resize, size


def shortest_edge(edge: int, data_hw: tuple[int, int]) -> tuple[int, int]:
    """H, W with the shorter side `edge` and the aspect ratio kept (transformers'
    get_resize_output_image_size with default_to_square=False)."""
    height, width = data_hw
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(edge * long / short)
    return (new_long, edge) if width <= height else (edge, new_long)


def _size_form(processor: dict[str, Any]) -> tuple[str, tuple[int, ...]]:
    size = processor.get("size")
    if isinstance(size, int | float):
        return ("exact", (int(size), int(size))) if _square_by_default(processor) else (
            "shortest", (int(size),))
    if isinstance(size, list | tuple) and len(size) == 2:
        return "exact", (int(size[0]), int(size[1]))
    if isinstance(size, dict):
        if size.get("height") and size.get("width"):
            return "exact", (int(size["height"]), int(size["width"]))
        if size.get("shortest_edge"):
            return "shortest", (int(size["shortest_edge"]),)
        if size.get("longest_edge"):
            return "longest", (int(size["longest_edge"]),)
    raise ModelFormatError(f"{PROCESSOR}: a size kdflow cannot read: {size!r}")


def _square_by_default(processor: dict[str, Any]) -> bool:
    """Whether the processor class reads an int size as a square (ViT) rather than the
    shortest edge (ConvNeXt, CLIP, MobileNet): the class's own `default_to_square`."""
    import transformers

    name = str(processor.get("image_processor_type") or processor.get("feature_extractor_type")
               or "")
    name = name.replace("FeatureExtractor", "ImageProcessor").removesuffix("Fast")
    cls = None
    for candidate in (f"{name}Pil", name):
        try:
            cls = getattr(transformers, candidate, None) if candidate else None
        except Exception:  # a lazily imported class whose backend is missing
            cls = None
        if cls is not None:
            break
    return bool(getattr(cls, "default_to_square", True))


def processor_config(prep: Preprocessing) -> dict[str, Any]:
    """A transformers image processor config of `prep` (ViT's, or DeiT's when it crops:
    both resize to height × width; transformers 5 reads them with its PIL backend where
    torchvision is missing). Gray-to-RGB is kdflow's own step, not described here."""
    crop = prep.size != prep.resize
    config: dict[str, Any] = {
        "image_processor_type": "DeiTImageProcessor" if crop else "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": prep.resize[0], "width": prep.resize[1]},
        "resample": BILINEAR,
        "do_center_crop": crop,
        "do_rescale": prep.scale != 1.0,
        "rescale_factor": prep.scale,
        "do_normalize": True,
        "image_mean": list(prep.mean),
        "image_std": list(prep.std),
    }
    if crop:
        config["crop_size"] = {"height": prep.size[0], "width": prep.size[1]}
    return config


def _pair(value: Any, fallback: tuple[int, int] | None) -> tuple[int, int]:
    if isinstance(value, int | float):
        return int(value), int(value)
    if isinstance(value, list | tuple) and len(value) == 2:
        return int(value[0]), int(value[1])
    if isinstance(value, dict) and value.get("height") and value.get("width"):
        return int(value["height"]), int(value["width"])
    if fallback is None:
        raise ModelFormatError(f"an image size kdflow cannot read: {value!r}")
    return fallback


def _per_channel(value: Any, channels: int, what: str) -> list[float]:
    values = [float(v) for v in value] if isinstance(value, list | tuple) else [float(value)]
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise ModelFormatError(f"{what} of {len(values)} channels for a {channels}-channel model")
    return values


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


def saved_preprocessing(folder: Path, channels: int, data_hw: tuple[int, int]) -> Preprocessing:
    """A saved folder's preprocessing: preprocess.safetensors (exact), else its processor
    config, else neutral at the data's size."""
    path = folder / PREPROCESS
    if path.is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        try:
            size = tensors["image_size"].tolist()
            resize = tensors["resize_size"].tolist()
            return Preprocessing(
                tensors["mean"].tolist(), tensors["std"].tolist(), (size[0], size[1]),
                (resize[0], resize[1]), float(tensors["scale"].item()),
            )
        except (KeyError, IndexError) as exc:
            raise ModelFormatError(f"{path}: not kdflow's preprocessing ({exc})") from exc
    processor = read_processor(folder)
    if processor is not None:
        return processor_preprocessing(processor, channels, data_hw)
    return Preprocessing([NEUTRAL] * channels, [NEUTRAL] * channels, data_hw, data_hw)


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
