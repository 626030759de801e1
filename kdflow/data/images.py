"""Image data: image files (a folder per class, or a table of paths or bytes) and a label.

The validate step decodes every image once, with Pillow, into the prepared dataset:

    <split>.parquet            image (binary: the file as it was), path (string), label (int64)
    pixels/<split>.safetensors `pixels`: uint8 N × C × H × W, resized to the dataset's size

so no later step decodes or resizes again (the teachers, their cache fill, the workers, the
evaluation), and the original bytes stay for what needs them (the report's pictures, a
check of the registered model's own preprocessing). Models read pixels 0-255 as uint8 and
do the rest inside themselves (scaling, normalisation, a pretrained model's resize to its
processor's size), so the exported model and the pyfunc take the same pixels.

Train-time augmentation (`kdflow.data.augment`) works on the decoded batches, on the
loop's device, so the cache serves augmented runs too.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from kdflow.data import storage
from kdflow.data.inputs import STREAM_ROWS, Encoder, read_labels
from kdflow.data.prepared import DatasetMeta, Split
from kdflow.data.tensor_rows import TensorRows
from kdflow.errors import DataError

log = logging.getLogger(__name__)

PIXELS = "pixels"
"""The prepared dataset's folder of decoded splits."""

GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F", "La"})
"""Pillow modes of one-channel images (with or without alpha); the rest are colour."""


def channels_of_mode(mode: str) -> int:
    """1 for a grayscale Pillow mode, 3 for a colour one (RGB, RGBA, P, CMYK, YCbCr...)."""
    return 1 if mode in GRAY_MODES else 3


def image_spec(meta: DatasetMeta) -> dict[str, object]:
    """What a saved model's spec.json records of image data, so that serving can decode and
    resize raw images as training did: `inputs: image`, `image_size` [H, W], `channels`.
    Empty for other data."""
    if meta.kind != "image":
        return {}
    channels, height, width = meta.input_shape
    return {"inputs": "image", "image_size": [height, width], "channels": channels}


def decode_image(data: bytes, size: Sequence[int] | None, channels: int) -> np.ndarray:
    """An image file's bytes as uint8 C × H × W: its EXIF orientation applied, converted to
    `channels` (1: grayscale `L`, 3: `RGB`; alpha dropped), and resized to `size` (H, W)
    with bilinear filtering where it differs. Raises OSError/ValueError (Pillow's) for data
    that is not a readable image."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened)
        image = image.convert("L" if channels == 1 else "RGB")
        if size is not None and image.size != (int(size[1]), int(size[0])):
            image = image.resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if channels == 1 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


SMALL_IMAGE_SECONDS = 2e-4
"""Below this decode time per image (a 28 × 28 PNG takes ~40 µs), a thread pool costs more
than it gains: Pillow holds the GIL for the Python around each small decode. MNIST's 4,000
training PNGs: 24,500 images/s on one thread, 5,200 on a pool of 8 (benchmarks/images.py)."""


def decode_many(
    images: Iterable[bytes], size: Sequence[int], channels: int, threads: int | None = None
) -> np.ndarray:
    """Decode images into one uint8 N × C × H × W array. The first 64 are decoded on this
    thread and timed; when images take longer than SMALL_IMAGE_SECONDS each (photos), the
    rest go to a thread pool (Pillow releases the GIL while it decodes and resizes), else
    they stay on this thread. `threads` 1 never starts a pool."""
    items = list(images)
    out = np.empty((len(items), channels, int(size[0]), int(size[1])), np.uint8)

    def one(i: int) -> None:
        out[i] = decode_image(items[i], size, channels)

    started = time.perf_counter()
    first = min(len(items), 64)
    for i in range(first):
        one(i)
    per_image = (time.perf_counter() - started) / max(first, 1)
    workers = threads or min(8, os.cpu_count() or 1)
    if workers <= 1 or per_image < SMALL_IMAGE_SECONDS:
        for i in range(first, len(items)):
            one(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(first, len(items)), chunksize=16))
    return out


def write_prepared_images(
    folder: Path,
    splits: Mapping[str, tuple[Sequence[bytes], Sequence[str], Sequence[str]]],
    classes: list[str],
    input_shape: list[int],
    label_column: str,
    sha256: str,
    source: str,
) -> DatasetMeta:
    """Write an image dataset: per split (images' bytes, paths, class names) a Parquet file
    of the originals and the decoded uint8 pixels at `input_shape` (C, H, W)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / PIXELS).mkdir(exist_ok=True)
    index = {name: i for i, name in enumerate(classes)}
    channels, height, width = input_shape
    rows = {}
    for name, (images, paths, labels) in splits.items():
        unknown = sorted({str(v) for v in labels} - set(index))
        if unknown:
            raise DataError(f"{name}: classes not in the training data: {', '.join(unknown)}")
        y = np.array([index[str(v)] for v in labels], np.int64)
        table = pa.table(
            {
                "image": pa.array(list(images), pa.binary()),
                "path": pa.array([str(p) for p in paths], pa.string()),
                "label": pa.array(y, pa.int64()),
            }
        )
        pq.write_table(table, folder / f"{name}.parquet")
        pixels = decode_many(images, (height, width), channels)
        save_file({PIXELS: pixels}, str(folder / PIXELS / f"{name}.safetensors"))
        rows[name] = len(y)
    meta = DatasetMeta(
        label_column=label_column,
        feature_columns=[],
        classes=list(classes),
        input_shape=list(input_shape),
        sha256=sha256,
        rows=rows,
        source=source,
        kind="image",
    )
    (folder / "meta.json").write_text(json.dumps(asdict(meta), indent=2))
    return meta


class ImageSource:
    """A prepared image dataset: decoded uint8 pixels and a `label` column, per split."""

    def __init__(self, uri: str, meta: DatasetMeta, cache_root: str | None = None) -> None:
        self.uri, self.meta = uri, meta
        self.tokenize_seconds = 0.0
        self._pixels: dict[str, np.ndarray] = {}

    def rows(self, split: str, encoder: Encoder | None = None) -> int:
        return int(self.meta.rows[split])

    def pixels(self, split: str) -> np.ndarray:
        """The whole split's pixels, uint8 N × C × H × W (read once per process)."""
        if split not in self._pixels:
            from safetensors import SafetensorError
            from safetensors.numpy import load

            uri = self._pixels_file(split)
            try:
                pixels = load(storage.read_bytes(uri))[PIXELS]
            except (SafetensorError, KeyError) as exc:
                raise DataError(f"{uri}: unreadable decoded images ({exc})") from exc
            self._check_pixels(uri, split, pixels.shape, pixels.dtype)
            self._pixels[split] = pixels
        return self._pixels[split]

    def _pixels_file(self, split: str) -> str:
        uri = storage.join(self.uri, PIXELS, f"{split}.safetensors")
        if not storage.exists(uri):
            raise DataError(f"{self.uri}: the decoded {split} images are missing ({uri})")
        return uri

    def _check_pixels(self, uri: str, split: str, shape: tuple[int, ...], dtype: Any) -> None:
        """The decoded pixels' shape and dtype are what meta.json says."""
        expected = (self.rows(split), *self.meta.input_shape)
        if shape != expected or dtype != np.uint8:
            raise DataError(
                f"{uri}: decoded images of shape {shape} ({dtype}); "
                f"meta.json says {expected} uint8"
            )

    def read(
        self, split: str, start: int = 0, stop: int | None = None, encoder: Encoder | None = None
    ) -> Split:
        if stop is None or split in self._pixels:  # the whole split, or held already
            pixels = self.pixels(split)
            stop = len(pixels) if stop is None else min(stop, len(pixels))
            return Split(x=pixels[start:stop], y=self.labels(split, start, stop))
        # A chunk (a streamed read, an evaluation chunk): its rows' bytes alone.
        uri = self._pixels_file(split)
        rows = TensorRows.open(uri, PIXELS)
        self._check_pixels(uri, split, rows.shape, rows.dtype)
        stop = min(stop, rows.shape[0])
        return Split(x=rows.read(start, stop), y=self.labels(split, start, stop))

    def stream(
        self, split: str, batch_rows: int = STREAM_ROWS, encoder: Encoder | None = None
    ) -> Iterator[np.ndarray]:
        pixels = self.pixels(split)
        for start in range(0, len(pixels), batch_rows):
            yield pixels[start : start + batch_rows]

    def texts(self, split: str, start: int = 0, stop: int | None = None) -> list[list[str]]:
        return []

    def labels(
        self, split: str, start: int = 0, stop: int | None = None, encoder: Encoder | None = None
    ) -> np.ndarray:
        return read_labels(self.uri, split, start, stop)

    def images(self, split: str, start: int = 0, stop: int | None = None) -> list[bytes]:
        """Rows [start, stop) of the original image files' bytes."""
        blobs = self._column(split, "image", start, stop)
        return [bytes(v) for v in blobs]  # type: ignore[call-overload]

    def paths(self, split: str, start: int = 0, stop: int | None = None) -> list[str]:
        """Rows [start, stop) of where each image came from."""
        return [str(v) for v in self._column(split, "path", start, stop)]

    def _column(self, split: str, column: str, start: int, stop: int | None) -> list[object]:
        table = storage.read_parquet_rows(
            storage.join(self.uri, f"{split}.parquet"), start, stop, columns=[column]
        )
        values: list[object] = table.column(column).to_pylist()
        return values

    def input_stats(self) -> tuple[list[float], list[float]]:
        """Each channel's mean and (unbiased) std over every pixel of the training split,
        in pixel units (0-255), repeated for each of the channel's pixels (the length of
        the flat inputs, as for columns).

        Per channel, not per pixel: a pixel that is always dark in the training images
        (MNIST's border) has a std near 0, and an augmented view that moves ink onto it
        would be scaled by hundreds. Accumulated in float64 a block of images at a time."""
        pixels = self.pixels("train")
        channels = pixels.shape[1]
        total, squares, n = np.zeros(channels), np.zeros(channels), 0
        for start in range(0, len(pixels), 1024):
            block = pixels[start : start + 1024].astype(np.float64)
            total += block.sum((0, 2, 3))
            squares += (block * block).sum((0, 2, 3))
            n += block.shape[0] * block.shape[2] * block.shape[3]
        mean = total / max(n, 1)
        std = np.sqrt(np.maximum((squares - n * mean * mean) / max(n - 1, 1), 0.0))
        per_pixel = pixels.shape[2] * pixels.shape[3]
        return np.repeat(mean, per_pixel).tolist(), np.repeat(std, per_pixel).tolist()
