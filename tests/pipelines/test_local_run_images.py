"""Image runs, the whole pipeline under kfp.local through `kdflow run`, as the issue writes
them: folders of digit PNGs (a folder per class) in, a student registered in MLflow out,
served by the registry from PNG bytes and from file paths, with no pickle in the model."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from tests.pipelines.test_local_run import LENIENT, kdflow, registry_versions
from tests.unit.image_helpers import image_folder

if TYPE_CHECKING:
    from mlflow.pyfunc import PyFuncModel

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.e2e]

CLASSES = 10
TRAIN_PER_CLASS, TEST_PER_CLASS = 30, 10
RESNET = "hf-config:resnet:embedding_size=32,hidden_sizes=32-64,depths=1-1"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".joblib")

Run = tuple[Path, subprocess.CompletedProcess[str], str]
"""The run's working folder, the finished `kdflow run`, its tracking URI."""


def digit_folders(root: Path) -> None:
    """images/train (30 digits a class) and images/test (the next 10 of each class)."""
    image_folder(root / "images" / "train", TRAIN_PER_CLASS, CLASSES)
    image_folder(root / "images" / "test", TEST_PER_CLASS, CLASSES, offset=TRAIN_PER_CLASS)


def image_run(root: Path, *args: str) -> Run:
    """`kdflow run --data images/train --test-data images/test` with small epochs,
    in-process distillation and LENIENT gates, registering `digits`."""
    digit_folders(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    proc = kdflow(
        "run",
        "--data",
        "images/train",
        "--test-data",
        "images/test",
        *args,
        "--teacher-epochs",
        "2",
        "--student-epochs",
        "3",
        "--workers",
        "0",
        *LENIENT,
        "--tracking-uri",
        uri,
        "--model-name",
        "digits",
        "--output",
        str(root / "out"),
        cwd=root,
    )
    return root, proc, uri


def load_champion(uri: str) -> PyFuncModel:
    """The registry's `digits@champion`, loaded as the pyfunc a server would load."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # another test may have pointed the registry elsewhere
    return mlflow.pyfunc.load_model("models:/digits@champion")


def prepared_dataset(root: Path) -> Path:
    """The validate step's prepared dataset folder of the run."""
    (folder,) = (root / "out" / "pipeline").glob("*/validate-data/dataset")
    return folder


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The issue's command: three CNN teachers, an MLP student, on folders of PNGs."""
    root = tmp_path_factory.mktemp("image-run")
    return image_run(root, "--teachers", "cnn", "cnn", "cnn", "--student", "mlp:hidden=64")


def test_an_image_run_registers_the_student(cnn_run: Run) -> None:
    """Exit 0; the summary says image data of 1 × 8 × 8 with every image of both folders,
    three trained CNN teachers and the MLP student, registered as version 1, champion."""
    root, proc, uri = cnn_run
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    summary = json.loads((root / "out" / "summary.json").read_text())
    dataset = summary["dataset"]
    assert dataset["kind"] == "image" and dataset["input_shape"] == [1, 8, 8]
    assert dataset["classes"] == [str(c) for c in range(CLASSES)]
    assert dataset["rows"] == CLASSES * (TRAIN_PER_CLASS + TEST_PER_CLASS)
    assert dataset["splits"]["test"] == CLASSES * TEST_PER_CLASS
    assert dataset["validation"]["passed"] is True
    assert [t["spec"] for t in summary["teachers"]] == ["cnn", "cnn", "cnn"]
    assert [len(h) for h in summary["history"]["teachers"]] == [2, 2, 2]
    assert [e["epoch"] for e in summary["history"]["student"]] == [1, 2, 3]
    assert summary["student"]["spec"] == "mlp:hidden=64"
    assert summary["student"]["latency_image_ms"] > 0
    assert summary["registered"]["name"] == "digits" and summary["registered"]["version"] == 1
    assert "champion" in summary["registered"]["aliases"]
    (version,) = registry_versions(uri, "digits")
    assert int(version.version) == 1


def test_the_champion_serves_png_bytes_and_paths_as_evaluated(cnn_run: Run) -> None:
    """The registered pyfunc, given the test PNGs' bytes (an `image` column) or their paths
    (a `path` column), predicts what the student's own weights predict on the prepared
    test pixels, with the same probabilities; and its accuracy on them is the summary's."""
    import torch
    from safetensors.numpy import load_file

    from kdflow.models.sources import load_saved

    root, proc, uri = cnn_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = load_champion(uri)
    dataset = prepared_dataset(root)
    meta = json.loads((dataset / "meta.json").read_text())
    test = pd.read_parquet(dataset / "test.parquet", columns=["path", "label"])
    files = [root / "images" / "test" / p for p in test["path"]]
    assert len(files) == CLASSES * TEST_PER_CLASS and all(f.is_file() for f in files)

    from_bytes = model.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    from_paths = model.predict(pd.DataFrame({"path": [str(f) for f in files]}))
    assert list(from_bytes.columns) == ["label", "probability"] and len(from_bytes) == len(files)
    pd.testing.assert_frame_equal(from_bytes, from_paths)

    import mlflow

    version = json.loads((root / "out" / "summary.json").read_text())["registered"]["version"]
    downloaded = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/digits/{version}", dst_path=str(root / "served")
        )
    )
    student, spec = load_saved(downloaded / "artifacts" / "student")
    assert spec["inputs"] == "image" and spec["image_size"] == [8, 8] and spec["channels"] == 1
    pixels = load_file(str(dataset / "pixels" / "test.safetensors"))["pixels"]
    with torch.inference_mode():
        probs = torch.softmax(student(torch.from_numpy(pixels)), -1).numpy()
    names = np.asarray(spec["class_names"])
    assert (from_bytes["label"].to_numpy() == names[probs.argmax(1)]).all()
    np.testing.assert_allclose(from_bytes["probability"], probs.max(1), rtol=1e-5, atol=1e-6)

    truth = np.asarray(meta["classes"])[test["label"].to_numpy()]
    assert [f.parent.name for f in files] == truth.tolist()
    accuracy = float((from_bytes["label"].to_numpy() == truth).mean())
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert accuracy == pytest.approx(summary["student"]["accuracy"], abs=1e-9)


def test_the_registered_model_holds_no_pickle(cnn_run: Run, tmp_path: Path) -> None:
    """The registered version's files are code, JSON/YAML and safetensors: no file named
    as a pickle or torch checkpoint, and no file that starts as one (pickle protocol 2+,
    or torch.save's zip)."""
    import mlflow

    root, proc, uri = cnn_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    load_champion(uri)  # points mlflow at the run's store
    files = Path(mlflow.artifacts.download_artifacts("models:/digits/1", dst_path=str(tmp_path)))
    paths = [p for p in files.rglob("*") if p.is_file()]
    names = [p.name for p in paths]
    assert "model.safetensors" in names and "spec.json" in names
    assert not [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    for path in paths:
        head = path.read_bytes()[:4]
        if path.suffix != ".safetensors":
            assert not (
                head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
            ), path
        assert head != b"PK\x03\x04", path


def test_the_report_shows_the_misclassified_images(cnn_run: Run) -> None:
    """The student gets some test images wrong after 3 epochs: the summary counts them
    (the test images less the right ones) and the report page shows their grid as a
    picture, as does the plots folder."""
    root, proc, _ = cnn_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((root / "out" / "summary.json").read_text())
    accuracy = summary["student"]["accuracy"]
    assert accuracy < 1, "the student got every test image right: no grid to check"
    wrong = summary["misclassified"]
    rows = CLASSES * TEST_PER_CLASS
    assert wrong["rows"] == rows and wrong["count"] == round((1 - accuracy) * rows)
    assert 0 < len(wrong["shown"]) <= 16 and wrong["thumbnails"]["png"]
    page = (root / "out" / "report.html").read_text()
    assert re.search(
        r'<figure id="misclassified"><img src="data:image/png;base64,[A-Za-z0-9+/=]+" '
        r'alt="Misclassified test images">',
        page,
    )
    assert (root / "out" / "plots" / "misclassified.png").stat().st_size > 0


def test_a_resnet_teacher_with_online_augmentation(tmp_path: Path) -> None:
    """The issue's second command: a ResNet teacher built from its config, crop and rotate
    augmentations labelled by the teacher online. Exit 0, the teacher and the settings as
    given in the summary, the teacher's soft targets in every student epoch, the student
    registered, and it serves PNG bytes."""
    root, proc, uri = image_run(
        tmp_path,
        "--teachers",
        RESNET,
        "--augment",
        "crop",
        "rotate",
        "--teacher-mode",
        "online",
        "--student",
        "mlp:hidden=64",
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert summary["dataset"]["kind"] == "image" and summary["dataset"]["input_shape"] == [1, 8, 8]
    assert [t["spec"] for t in summary["teachers"]] == [RESNET]
    assert summary["config"]["distill"]["augment"] == ["crop", "rotate"]
    assert summary["config"]["distill"]["teacher_mode"] == "online"
    assert [len(h) for h in summary["history"]["teachers"]] == [2]
    student_epochs = summary["history"]["student"]
    assert [e["epoch"] for e in student_epochs] == [1, 2, 3]
    assert all(e["soft_loss"] > 0 for e in student_epochs)
    assert summary["passed"] is True
    assert summary["registered"]["version"] == 1
    (version,) = registry_versions(uri, "digits")
    assert int(version.version) == 1
    files = sorted((root / "images" / "test").rglob("*.png"))[::TEST_PER_CLASS]
    predicted = load_champion(uri).predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    assert len(predicted) == CLASSES
    assert set(predicted["label"]) <= {str(c) for c in range(CLASSES)}
