"""validate_data on a folder of images (a sub-folder per class), through the component's
`python_func` as kfp's executor calls it: the prepared image dataset, the report, the GX
Data Docs page and what the step hands on; and a corrupt image failing the step by name."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from kfp import dsl
from safetensors.numpy import load_file

from components import validate_data
from kdflow.errors import DataValidationError
from tests.unit.image_helpers import image_folder

validate = validate_data.make("kdflow:test").python_func

PER_CLASS, CLASSES = 20, 3
OUTPUTS = (
    ("dataset", dsl.Dataset),
    ("report", dsl.Markdown),
    ("data_docs", dsl.HTML),
    ("profile", dsl.HTML),
    ("metrics", dsl.Metrics),
)


def run(
    artifact: Callable[..., Any],
    configs: Callable[..., dict[str, str]],
    tmp_path: Path,
    **parameters: Any,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The component on `parameters` (pipeline parameters), its artifacts in tmp_path:
    the teacher plan it returns and its output artifacts by name."""
    out = {name: artifact(kind, name) for name, kind in OUTPUTS}
    cfg = configs(**parameters)
    plan = validate(
        data_config=cfg["data_config"],
        teacher_config=cfg["teacher_config"],
        seed=3,
        tracking_uri="",
        run_id="",
        info=str(tmp_path / "info"),
        passed=str(tmp_path / "passed"),
        **out,
    )
    return plan, out


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """3 class folders (`0/`, `1/`, `2/`) of 20 handwritten-digit PNGs each, 8 × 8 grey."""
    return image_folder(tmp_path / "images", per_class=PER_CLASS, classes=CLASSES)


def test_an_image_folder_is_prepared_reported_and_planned(
    artifact: Callable[..., Any],
    configs: Callable[..., dict[str, str]],
    tmp_path: Path,
    images: Path,
) -> None:
    """A clean image folder passes and the step writes the prepared image dataset (meta.json
    of kind image, the decoded uint8 pixels of each split next to its Parquet file of the
    original bytes), the report, GX's Data Docs and the profile; what it hands on says image
    data of shape 1 × 8 × 8, and the teachers it plans are CNNs that fit that shape."""
    plan, out = run(artifact, configs, tmp_path, data=str(images))
    dataset = Path(out["dataset"].path)

    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["kind"] == "image"
    assert meta["input_shape"] == [1, 8, 8]
    assert meta["classes"] == [str(c) for c in range(CLASSES)]
    assert meta["feature_columns"] == []
    rows = meta["rows"]
    assert set(rows) == {"train", "val", "test"} and all(n > 0 for n in rows.values())
    assert sum(rows.values()) == PER_CLASS * CLASSES, "every image in exactly one split"
    paths: list[str] = []
    for split, n in rows.items():
        pixels = load_file(str(dataset / "pixels" / f"{split}.safetensors"))["pixels"]
        assert pixels.dtype == np.uint8 and pixels.shape == (n, 1, 8, 8), split
        assert pixels.max() > 0, f"{split}: decoded digits have ink"
        table = pq.read_table(dataset / f"{split}.parquet")
        assert table.column_names == ["image", "path", "label"], split
        assert table.num_rows == n
        blobs = table.column("image").to_pylist()
        assert all(b.startswith(b"\x89PNG") for b in blobs), f"{split}: the files' own bytes"
        labels = table.column("label").to_pylist()
        assert set(labels) <= set(range(CLASSES))
        split_paths = table.column("path").to_pylist()
        # Each row's label is its class folder's position among the classes.
        assert all(
            meta["classes"][y] == Path(p).parts[0] for y, p in zip(labels, split_paths, strict=True)
        )
        paths += split_paths
    assert len(set(paths)) == PER_CLASS * CLASSES, "no image in two splits"

    assert out["dataset"].metadata["rows"] == PER_CLASS * CLASSES
    assert len(out["dataset"].metadata["sha256"]) == 64
    info = json.loads((tmp_path / "info").read_text())
    assert info["kind"] == "image" and info["input_shape"] == [1, 8, 8]
    assert info["features"] == 64 and info["passed"] is True
    assert info["splits"] == rows and info["classes"] == meta["classes"]
    assert info["validation"]["failures"] == []
    assert json.loads((tmp_path / "passed").read_text()) is True
    assert out["metrics"].metadata["classes"] == CLASSES
    assert out["metrics"].metadata["validation_failures"] == 0

    report = Path(out["report"].path).read_text()
    assert report.startswith("#")
    docs = Path(out["data_docs"].path).read_text()
    assert "<html" in docs.lower() and "No Data Docs" not in docs, "GX's own page"
    assert (tmp_path / "gx-data-docs" / "index.html").is_file()
    assert "<html" in Path(out["profile"].path).read_text().lower()

    assert [m["index"] for m in plan] == [0, 1, 2]
    assert all(m["spec"].startswith("cnn") for m in plan), plan


def test_a_corrupt_image_fails_the_step_naming_the_file_with_the_report_written(
    artifact: Callable[..., Any],
    configs: Callable[..., dict[str, str]],
    tmp_path: Path,
    images: Path,
) -> None:
    """One file of random bytes among the PNGs: the step fails with a DataValidationError
    that lists the file by its path in the folder and why it does not decode; the report
    (which lists it too) and the Data Docs page are written all the same, and nothing is
    handed on (no prepared dataset, no info)."""
    bad = images / "1" / "corrupt.png"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(DataValidationError) as failed:
        run(artifact, configs, tmp_path, data=str(images))
    message = str(failed.value)
    assert "1/corrupt.png" in message, message
    assert "cannot be decoded" in message and "not an image" in message, message
    assert f"1 of {PER_CLASS * CLASSES + 1:,} train images" in message, message

    report = (tmp_path / "report").read_text()
    assert report.startswith("#") and "1/corrupt.png" in report
    docs = (tmp_path / "data_docs").read_text()
    assert "<html" in docs.lower(), "the page the Kubeflow UI shows"
    assert not (tmp_path / "info").exists() and not (tmp_path / "passed").exists()
    assert not (Path(tmp_path / "dataset") / "meta.json").exists()
