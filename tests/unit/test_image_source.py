"""The image data source: decoding, the prepared dataset's pixels, and the models that read
them (zoo and python: factories on uint8 pixels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdflow.config import check_image_size
from kdflow.data.images import (
    decode_image,
    decode_many,
    image_spec,
)
from kdflow.data.sources import open_source
from kdflow.errors import ConfigError, DataError
from kdflow.models.sources import build, load_saved, source_for
from tests.unit.image_helpers import digit_images, png_bytes, prepared_images


def test_decode_image_converts_and_resizes() -> None:
    pixels = digit_images(1, 1)[0][1]
    gray = decode_image(png_bytes(pixels), None, 1)
    assert gray.shape == (1, 8, 8) and gray.dtype == np.uint8
    assert np.array_equal(gray[0], pixels)
    rgb = decode_image(png_bytes(pixels), (16, 12), 3)
    assert rgb.shape == (3, 16, 12)
    # Gray to RGB repeats the channel.
    assert np.array_equal(rgb[0], rgb[1]) and np.array_equal(rgb[1], rgb[2])
    # A colour JPEG read as grayscale.
    colour = np.stack([pixels, np.zeros_like(pixels), pixels], axis=-1)
    assert decode_image(png_bytes(colour, fmt="JPEG"), (8, 8), 1).shape == (1, 8, 8)


def test_decode_image_applies_exif_orientation() -> None:
    from PIL import Image

    wide = np.zeros((4, 8), np.uint8)
    wide[:, :2] = 255
    image = Image.fromarray(wide)
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90° clockwise: a camera held upright
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=100)
    assert decode_image(buffer.getvalue(), None, 1).shape == (1, 8, 4)


def test_decode_many_matches_one_by_one() -> None:
    blobs = [png_bytes(p) for _, p in digit_images(40, 2)]
    many = decode_many(blobs, (8, 8), 1, threads=2)
    assert many.shape == (80, 1, 8, 8)
    assert all(np.array_equal(many[i], decode_image(b, (8, 8), 1)) for i, b in enumerate(blobs))


def test_decode_image_refuses_what_is_not_an_image() -> None:
    with pytest.raises(OSError):
        decode_image(b"not an image", None, 1)


@pytest.mark.parametrize("size", [[0, 0], [32], [32, -1]])
def test_check_image_size(size: list[int]) -> None:
    with pytest.raises(ConfigError, match="--image-size"):
        check_image_size(size)


def test_image_source_reads_pixels_labels_and_originals(tmp_path) -> None:
    data = open_source(str(prepared_images(tmp_path / "ds")))
    meta = data.meta
    assert meta.kind == "image" and meta.input_shape == [1, 8, 8] and meta.n_features == 64
    train = data.read("train")
    assert train.x.dtype == np.uint8 and train.x.shape == (data.rows("train"), 1, 8, 8)
    assert np.array_equal(data.labels("train"), train.y)
    part = data.read("train", 3, 7)
    assert np.array_equal(part.x, train.x[3:7])
    streamed = np.concatenate(list(data.stream("train", batch_rows=7)))
    assert np.array_equal(streamed, train.x)
    originals = data.images("test", 0, 2)  # type: ignore[attr-defined]
    assert np.array_equal(decode_image(originals[0], (8, 8), 1), data.read("test").x[0])
    mean, std = data.input_stats()
    # Per channel (one here), repeated for every pixel.
    every = train.x.astype(np.float64).ravel()
    assert len(mean) == len(std) == 64
    assert np.allclose(mean, every.mean()) and np.allclose(std, every.std(ddof=1))
    assert data.texts("train") == []


def test_image_source_refuses_pixels_that_do_not_match_meta(tmp_path) -> None:
    from safetensors.numpy import save_file

    folder = prepared_images(tmp_path / "ds")
    wrong = {"pixels": np.zeros((2, 1, 8, 8), np.uint8)}
    save_file(wrong, str(folder / "pixels" / "val.safetensors"))
    with pytest.raises(DataError, match="meta.json says"):
        open_source(str(folder)).read("val")
    (folder / "pixels" / "test.safetensors").unlink()
    with pytest.raises(DataError, match="decoded test images are missing"):
        open_source(str(folder)).read("test")


@pytest.mark.parametrize(
    "spec",
    ["mlp:hidden=16", "cnn:channels=4-8,hidden=16", "python:tests.fixtures.user_models:SmallCnn"],
)
def test_zoo_models_read_uint8_pixels_and_save_the_image_spec(tmp_path, spec: str) -> None:
    data = open_source(str(prepared_images(tmp_path / "ds")))
    model = build(spec, data.meta, data.input_stats()).eval()
    x = torch.from_numpy(data.read("test").x)
    logits = model(x)
    assert logits.shape == (len(x), 3)
    assert torch.allclose(logits, model(x.float()))  # augmented batches arrive as floats
    folder = source_for(spec).save(model, tmp_path / "m", data.meta, {})
    loaded, saved = load_saved(folder)
    assert saved["inputs"] == "image" and saved["image_size"] == [8, 8] and saved["channels"] == 1
    assert torch.allclose(loaded(x), logits)
    assert image_spec(data.meta) == {"inputs": "image", "image_size": [8, 8], "channels": 1}
