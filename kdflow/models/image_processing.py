"""A vision model's preprocessing, as kdflow applies it inside the model: the size it sees,
a centre crop, the scale and the per-channel mean and std. Read from a pretrained folder's
`preprocessor_config.json` (plain JSON: no image-processor class, so no torchvision), made
from the training pixels for a fresh model, and written back as a real image-processor
config that transformers' `AutoImageProcessor` reads."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdflow.errors import ConfigError, ModelFormatError

PROCESSOR = "preprocessor_config.json"
PREPROCESS = "preprocess.safetensors"
"""kdflow's exact copy of the preprocessing buffers, next to the processor config."""

NEUTRAL = 0.5
"""Mean and std of a folder without a processor config: ImageNet-neutral, pixels to ±1."""

BILINEAR = 2
"""PIL's resample code for bilinear, recorded in the processor config kdflow writes."""

CONVNEXT_WARP = 384
"""ConvNeXt's processor resizes to the crop (`crop_pct`) below this size, warps above."""


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
