"""Small image datasets for the tests of image data: scikit-learn's handwritten digits
(8×8, written by people) as PNG files in a folder per class, and prepared datasets of them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def digit_images(
    per_class: int = 20, classes: int = 3, offset: int = 0
) -> list[tuple[int, np.ndarray]]:
    """(class, uint8 8×8 image) pairs of the first `per_class` digits of each class, from
    row `offset` of each class on (0-16 ink scaled to 0-255)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    out = []
    for label in range(classes):
        rows = np.flatnonzero(bunch.target == label)[offset : offset + per_class]
        for r in rows:
            out.append((label, (bunch.images[r] * (255 / 16)).round().astype(np.uint8)))
    return out


def png_bytes(pixels: np.ndarray, mode: str = "L", fmt: str = "PNG") -> bytes:
    from PIL import Image

    image = Image.fromarray(pixels)
    if mode != "L":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def image_folder(root: Path, per_class: int = 20, classes: int = 3, offset: int = 0) -> Path:
    """A folder per class (`0/`, `1/`, ...) of digit PNGs."""
    for i, (label, pixels) in enumerate(digit_images(per_class, classes, offset)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:04d}.png").write_bytes(png_bytes(pixels))
    return root


def prepared_images(folder: Path, per_class: int = 20, classes: int = 3) -> Path:
    """A prepared image dataset (train/val/test) of digit PNGs, 1 × 8 × 8, without the
    validate step."""
    from kdflow.data.images import write_prepared_images

    items = digit_images(per_class, classes)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(items))
    parts = {"train": order[: len(order) // 2], "val": order[len(order) // 2 : 3 * len(order) // 4],
             "test": order[3 * len(order) // 4 :]}
    splits = {
        name: (
            [png_bytes(items[i][1]) for i in rows],
            [f"{items[i][0]}/{i:04d}.png" for i in rows],
            [str(items[i][0]) for i in rows],
        )
        for name, rows in parts.items()
    }
    write_prepared_images(
        folder, splits, [str(c) for c in range(classes)], [1, 8, 8], "label", "0" * 64, "test"
    )
    return folder
