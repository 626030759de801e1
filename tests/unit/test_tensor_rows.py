"""Rows of a safetensors tensor by byte range (`kdflow.data.tensor_rows`), and the image
source's chunks read through it: a chunk costs its own bytes, not the split's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from kdflow.data.sources import open_source
from kdflow.data.tensor_rows import TensorRows
from kdflow.errors import DataError
from tests.unit.image_helpers import prepared_images


def test_rows_are_read_by_range_and_clipped(tmp_path: Path) -> None:
    values = np.arange(7 * 3 * 2, dtype=np.int32).reshape(7, 3, 2)
    path = tmp_path / "t.safetensors"
    save_file({"other": np.ones(5, np.float16), "inputs": values}, str(path))
    rows = TensorRows.open(str(path), "inputs")
    assert rows.shape == (7, 3, 2) and rows.dtype == np.int32
    np.testing.assert_array_equal(rows.read(2, 5), values[2:5])
    np.testing.assert_array_equal(rows.read(5, 100), values[5:])
    assert rows.read(9, 12).shape == (0, 3, 2)
    assert rows.read(0, 1).flags.writeable
    with pytest.raises(DataError, match="not a safetensors file holding 'pixels'"):
        TensorRows.open(str(path), "pixels")
    save_file({"inputs": values}, str(path))
    path.write_bytes(path.read_bytes()[:-8])  # a torn upload: the last row's bytes short
    with pytest.raises(DataError, match="truncated: rows 5-7 are not all there"):
        TensorRows.open(str(path), "inputs").read(5, 7)


def test_an_image_chunk_is_the_whole_splits_rows(tmp_path: Path) -> None:
    from kdflow.data.images import ImageSource

    folder = prepared_images(tmp_path / "images")
    whole = open_source(str(folder)).read("train")
    source = open_source(str(folder))
    assert isinstance(source, ImageSource)
    part = source.read("train", 3, 11)
    np.testing.assert_array_equal(part.x, whole.x[3:11])
    np.testing.assert_array_equal(part.y, whole.y[3:11])
    assert not source._pixels, "the chunk was read alone, not the split"
