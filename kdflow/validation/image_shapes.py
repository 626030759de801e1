"""The shape of image data: one size and one channel count for every image, or the options that
make them one (`--image-size`, `--channels`); `image_shape` gives the prepared data's C, H, W."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import pandas as pd

from kdflow.config import check_image_size
from kdflow.data.image_facts import ImageSet, usable_facts
from kdflow.data.images import channels_of_mode
from kdflow.errors import ConfigError
from kdflow.validation.findings import Finding


def image_shape(train: ImageSet, image_size: Sequence[int] | None, channels: int) -> list[int]:
    """[C, H, W] of the prepared images: `channels` or the one channel count of the usable
    training images, `image_size` or the one size they share. ConfigError naming
    --channels / --image-size, with example sizes or modes, when they differ."""
    check_image_size(image_size)
    usable = {"train": usable_facts(train)}
    if not channels:
        problem = _channels_problem(usable) or _none_problem(usable, "--channels")
        if problem:
            raise ConfigError(problem, option="--channels")
        channels = channels_of_mode(str(usable["train"]["mode"].iloc[0]))
    if image_size is None:
        problem = _size_problem(usable) or _none_problem(usable, "--image-size")
        if problem:
            raise ConfigError(problem, option="--image-size")
        first = usable["train"].iloc[0]
        image_size = [int(first["height"]), int(first["width"])]
    return [int(channels), int(image_size[0]), int(image_size[1])]


def shape_findings(
    sets: dict[str, ImageSet], image_size: Sequence[int] | None, channels: int
) -> list[Finding]:
    """Images of several sizes without --image-size, or of grayscale and colour without
    --channels: the prepared dataset needs one shape."""
    usable = {split: usable_facts(s) for split, s in sets.items()}
    found = []
    size = None if image_size is not None else _size_problem(usable)
    if size:
        found.append(Finding("image_sizes", "width", size, _groups(usable, _size_key)[0]))
    mixed = None if channels else _channels_problem(usable)
    if mixed:
        found.append(Finding("image_channels", "mode", mixed, _groups(usable, _channel_key)[0]))
    return found


def _size_problem(usable: dict[str, pd.DataFrame]) -> str | None:
    """Why the images have no single size (naming --image-size), or None."""
    counts, examples = _groups(usable, _size_key)
    if len(counts) < 2:
        return None
    common = max(counts, key=counts.__getitem__).replace("x", ",")
    return (
        f"the images have {len(counts)} different sizes (height×width): "
        f"{_examples(counts, examples)}; give --image-size H,W to resize them all to one size "
        f"(e.g. --image-size {common}, the most common)"
    )


def _channels_problem(usable: dict[str, pd.DataFrame]) -> str | None:
    """Why the images have no single channel count (naming --channels), or None."""
    counts, examples = _groups(usable, _channel_key)
    if len({key.split(" ")[0] for key in counts}) < 2:
        return None
    return (
        "the images mix grayscale and colour: "
        f"{_examples(counts, examples)}; give --channels 1 (grayscale) or --channels 3 (RGB) "
        "to convert them all"
    )


def _none_problem(usable: dict[str, pd.DataFrame], option: str) -> str | None:
    if any(len(frame) for frame in usable.values()):
        return None
    return f"no training image decodes, so {option} cannot be derived from the images"


def _size_key(frame: pd.DataFrame) -> pd.Series:
    """Each image's size as `HxW`."""
    return frame["height"].astype(str) + "x" + frame["width"].astype(str)


def _channel_key(frame: pd.DataFrame) -> pd.Series:
    """Each image's channel count and mode, as `3 channels (mode RGB)`."""

    def key(mode: str) -> str:
        count = channels_of_mode(mode)
        return f"{count} channel{'s' if count > 1 else ''} (mode {mode})"

    return frame["mode"].astype(str).map({m: key(m) for m in frame["mode"].astype(str).unique()})


def _groups(
    usable: dict[str, pd.DataFrame], key: Callable[[pd.DataFrame], pd.Series]
) -> tuple[dict[str, int], dict[str, str]]:
    """Images per key over the splits, most first, and the first path (with its split) of
    each key."""
    counts: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for split, frame in usable.items():
        keys = key(frame)
        counts.update({str(k): int(n) for k, n in keys.value_counts().items()})
        firsts = frame["path"].groupby(keys.to_numpy(), sort=False).first()
        for name, path in firsts.items():
            examples.setdefault(str(name), f"{split} {path}")
    return dict(counts.most_common()), examples


def _examples(counts: dict[str, int], examples: dict[str, str], limit: int = 5) -> str:
    items = [
        f"{k} ({n:,} image{'s' if n != 1 else ''}, e.g. {examples[k]})"
        for k, n in list(counts.items())[:limit]
    ]
    more = f" … ({len(counts) - limit} more)" if len(counts) > limit else ""
    return ", ".join(items) + more
