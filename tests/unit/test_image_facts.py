"""Image data as users keep it, read into per-image facts: real files, real Pillow.

The builders at the top (`noise`, `image_folder`) are shared with the tests of image
validation and the S3 test."""

from __future__ import annotations

import hashlib
import io
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdflow.data.image_facts import FACT_COLUMNS, ImageSet, is_image_data, read_image_set
from kdflow.errors import DataError

_SEEDS = itertools.count(1000)
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}


def noise(
    size: tuple[int, int] = (8, 8), mode: str = "RGB", fmt: str = "PNG", seed: int | None = None
) -> bytes:
    """An image file of random pixels, `size` = (height, width); a new image each call."""
    from PIL import Image

    rng = np.random.default_rng(next(_SEEDS) if seed is None else seed)
    pixels = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def image_folder(
    root: Path,
    classes: dict[str, int],
    size: tuple[int, int] = (8, 8),
    mode: str = "RGB",
    formats: tuple[str, ...] = ("PNG",),
) -> Path:
    """A folder per class with `classes[name]` noise images, cycling through `formats`."""
    for name, count in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            fmt = formats[i % len(formats)]
            (folder / f"{i:03d}{EXTENSIONS[fmt]}").write_bytes(noise(size, mode, fmt))
    return root


def facts_of(image_set: ImageSet, path: str) -> pd.Series:
    rows = image_set.facts[image_set.facts["path"] == path]
    assert len(rows) == 1, image_set.facts["path"].tolist()
    return rows.iloc[0]


# ----------------------------------------------------------------------------- folders


def test_a_good_folder_gives_one_row_of_facts_per_image(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "data", {"dog": 3, "cat": 3}, formats=("PNG", "JPEG", "WEBP"))
    image_set = read_image_set(str(root))
    facts = image_set.facts
    assert image_set.name == str(root) and image_set.layout == "folder"
    assert list(facts.columns) == FACT_COLUMNS
    assert facts["path"].tolist() == [
        "cat/000.png",
        "cat/001.jpg",
        "cat/002.webp",
        "dog/000.png",
        "dog/001.jpg",
        "dog/002.webp",
    ], "sorted by class, then path"
    assert facts["label"].tolist() == ["cat"] * 3 + ["dog"] * 3
    assert facts["format"].tolist() == ["PNG", "JPEG", "WEBP"] * 2
    assert set(facts["mode"]) == {"RGB"} and facts["decodes"].all()
    assert facts["width"].tolist() == [8] * 6 and facts["height"].tolist() == [8] * 6
    assert str(facts["width"].dtype) == "Int64" and facts["error"].isna().all()
    data = (root / "dog" / "001.jpg").read_bytes()
    row = facts_of(image_set, "dog/001.jpg")
    assert row["bytes"] == len(data) and row["sha256"] == hashlib.sha256(data).hexdigest()
    assert image_set.load([4, 0]) == [data, (root / "cat" / "000.png").read_bytes()]
    assert image_set.empty_classes == [] and image_set.other_files == [] and not image_set.missing


def test_which_inputs_are_image_data(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "data", {"a": 1, "b": 1})
    table = tmp_path / "t.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(table)
    assert is_image_data(str(root), None) and is_image_data(f"file://{root}", None)
    assert is_image_data(str(table), "image"), "--image-column makes any table image data"
    assert not is_image_data(str(table), None)
    assert not is_image_data("builtin:digits", None)
    assert not is_image_data(str(tmp_path / "absent"), None)


def test_each_damaged_file_is_a_fact_with_its_reason(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "data", {"a": 2, "b": 2})
    whole = noise((32, 32))
    (root / "a" / "corrupt.png").write_bytes(np.random.default_rng(0).bytes(300))
    (root / "a" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (root / "b" / "empty.png").write_bytes(b"")
    (root / "b" / "notes.jpg").write_text("not a picture, a note\n")
    image_set = read_image_set(str(root), threads=2)
    errors = dict(zip(image_set.facts["path"], image_set.facts["error"], strict=True))
    assert errors["a/corrupt.png"] == "not an image (cannot identify image file)"
    assert errors["a/truncated.png"].startswith("truncated: ")
    assert errors["b/empty.png"] == "zero bytes"
    assert errors["b/notes.jpg"] == "not an image (cannot identify image file)"
    bad = image_set.facts[image_set.facts["error"].notna()]
    assert not bad["decodes"].any() and len(bad) == 4
    truncated = facts_of(image_set, "a/truncated.png")
    assert (truncated["format"], truncated["width"]) == ("PNG", 32), "the header was read"
    assert facts_of(image_set, "b/empty.png")["bytes"] == 0
    assert image_set.facts["decodes"].sum() == 4


def test_empty_class_folders_other_files_and_hidden_entries(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "data", {"a": 2, "b": 2})
    (root / "empty").mkdir()
    (root / "a" / "README.txt").write_text("about class a")
    (root / "LICENSE").write_text("top-level file")
    (root / "stray.png").write_bytes(noise())
    (root / "a" / ".DS_Store").write_bytes(b"\0")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.png").write_bytes(noise())
    (root / "b" / "deeper").mkdir()
    (root / "b" / "deeper" / "x.PNG").write_bytes(noise())
    image_set = read_image_set(str(root))
    assert image_set.empty_classes == ["empty"]
    assert image_set.other_files == ["LICENSE", "a/README.txt", "stray.png"]
    assert "b/deeper/x.PNG" in image_set.facts["path"].tolist(), "deeper files: their class"
    assert facts_of(image_set, "b/deeper/x.PNG")["label"] == "b"
    assert set(image_set.facts["label"]) == {"a", "b"} and len(image_set.facts) == 5


def test_folders_that_are_not_image_data_raise_data_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: no class folders \(found nothing\)"):
        read_image_set(str(empty))
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "1.png").write_bytes(noise())
    (flat / "2.png").write_bytes(noise())
    with pytest.raises(DataError, match=r"2 images lie at the top but there are no class fold"):
        read_image_set(str(flat))
    with pytest.raises(DataError, match=r"absent: no such folder"):
        read_image_set(str(tmp_path / "absent"))
    (tmp_path / "t.csv").write_text("a\n1\n")
    with pytest.raises(DataError, match=r"t\.csv: is a file; give --image-column"):
        read_image_set(str(tmp_path / "t.csv"))


def test_one_class_and_only_empty_classes_are_left_to_validation(tmp_path: Path) -> None:
    one = read_image_set(str(image_folder(tmp_path / "one", {"only": 3})))
    assert set(one.facts["label"]) == {"only"}
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    hollow = read_image_set(str(tmp_path / "hollow"))
    assert hollow.facts.empty and hollow.empty_classes == ["a"]
    assert list(hollow.facts.columns) == FACT_COLUMNS


def test_exif_orientation_swaps_the_recorded_size_as_decoding_does(tmp_path: Path) -> None:
    from PIL import Image

    from kdflow.data.images import decode_image

    image = Image.fromarray(np.zeros((4, 8, 3), np.uint8))  # 4 high, 8 wide
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "a" / "r.jpg").write_bytes(buffer.getvalue())
    row = read_image_set(str(root)).facts.iloc[0]
    assert (row["height"], row["width"]) == (8, 4)
    assert decode_image(buffer.getvalue(), None, 3).shape == (3, 8, 4)


def test_the_thread_pool_gives_the_same_facts_in_the_same_order(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "data", {"a": 12, "b": 12}, formats=("PNG", "WEBP"))
    one = read_image_set(str(root), threads=1).facts
    many = read_image_set(str(root), threads=4).facts
    pd.testing.assert_frame_equal(one, many)


# ------------------------------------------------------------------------------ tables


def test_a_parquet_table_of_relative_and_absolute_paths_lists_missing_files(
    tmp_path: Path,
) -> None:
    root = image_folder(tmp_path / "imgs", {"a": 2, "b": 1})
    absolute = str(root / "b" / "000.png")
    table = tmp_path / "t.parquet"
    pd.DataFrame(
        {
            "file": ["imgs/a/001.png", "imgs/a/000.png", absolute, "imgs/gone.png", None],
            "label": ["a", "a", "b", "b", "a"],
        }
    ).to_parquet(table)
    image_set = read_image_set(str(table), image_column="file")
    facts = image_set.facts
    assert image_set.layout == "table"
    assert facts["path"].tolist() == [
        "imgs/a/001.png",
        "imgs/a/000.png",
        absolute,
        "imgs/gone.png",
        f"{table}#4",
    ], "table order; paths as written"
    assert facts["decodes"].tolist() == [True, True, True, False, False]
    assert facts["error"].tolist()[3:] == ["missing file", "no path (null or empty)"]
    assert image_set.missing == ["imgs/gone.png"]
    assert pd.isna(facts_of(image_set, "imgs/gone.png")["sha256"])
    assert image_set.load([2]) == [(root / "b" / "000.png").read_bytes()]


def test_a_parquet_table_of_image_bytes(tmp_path: Path) -> None:
    first = noise()
    blobs = [first, noise(fmt="JPEG"), b"", None, b"GIF89a but no more"]
    table = tmp_path / "bytes.parquet"
    pd.DataFrame({"image": blobs, "label": [0, 1, 0, 1, 1]}).to_parquet(table)
    image_set = read_image_set(str(table), image_column="image")
    facts = image_set.facts
    assert facts["path"].tolist() == [f"{table}#{i}" for i in range(5)]
    assert facts["label"].tolist() == ["0", "1", "0", "1", "1"], "class names are strings"
    assert facts["decodes"].tolist() == [True, True, False, False, False]
    assert facts["error"].tolist()[2:4] == ["zero bytes", "no bytes (null)"]
    assert facts["error"].iloc[4].startswith(("not an image", "truncated", "corrupt"))
    assert image_set.load([1, 0]) == [blobs[1], blobs[0]]
    assert facts["sha256"].iloc[0] == hashlib.sha256(first).hexdigest()


def test_a_csv_table_of_paths(tmp_path: Path) -> None:
    image_folder(tmp_path / "imgs", {"0": 1, "1": 1})
    table = tmp_path / "list.csv"
    table.write_text("path,target\nimgs/0/000.png,0\nimgs/1/000.png,1\n")
    image_set = read_image_set(str(table), label_column="target", image_column="path")
    assert image_set.facts["label"].tolist() == ["0", "1"]
    assert image_set.facts["decodes"].all()


def test_tables_without_a_usable_image_column_raise_data_error(tmp_path: Path) -> None:
    table = tmp_path / "t.parquet"
    pd.DataFrame({"pixels": [1.5, 2.5], "label": ["a", "b"]}).to_parquet(table)
    with pytest.raises(
        DataError,
        match=r"--image-column 'image' is not a column of the table "
        r"\(columns: pixels, label\)",
    ):
        read_image_set(str(table), image_column="image")
    with pytest.raises(
        DataError,
        match=r"--image-column 'pixels' holds double values; it must "
        r"hold image file paths \(strings\) or",
    ):
        read_image_set(str(table), image_column="pixels")
    with pytest.raises(DataError, match=r"--label-column 'class' is not a column"):
        read_image_set(str(table), label_column="class", image_column="pixels")
    with pytest.raises(DataError, match=r"absent\.parquet: no such file"):
        read_image_set(str(tmp_path / "absent.parquet"), image_column="image")
