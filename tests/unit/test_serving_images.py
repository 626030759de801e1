"""An image student as MLflow serves it (`kdflow.mlflow.serving`): saved as kdflow's pyfunc
into a folder and loaded back through `mlflow.pyfunc.load_model`, it reads image files as
bytes or paths, decodes them with `decode_image` (the training data's preprocessing), and
says which rows are not images; its signature and input example are MLflow's `binary`
column of a PNG."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from tests.unit.image_helpers import prepared_images


@pytest.fixture(scope="module")
def image_pyfunc(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A zoo cnn for 1 × 8 × 8 digit PNGs, saved, written as kdflow's pyfunc and loaded
    back by MLflow; the test images as files too."""
    import mlflow

    from kdflow.data.sources import open_source
    from kdflow.mlflow.logged_models import pyfunc_arguments
    from kdflow.models.sources import build, source_for

    root = tmp_path_factory.mktemp("image-pyfunc")
    data = open_source(str(prepared_images(root / "data")))
    torch.manual_seed(0)
    student = source_for("cnn").save(build("cnn", data.meta, data.input_stats()),
                                     root / "student", data.meta, {})
    mlflow.pyfunc.save_model(path=str(root / "pyfunc"), **pyfunc_arguments(student))
    blobs = data.images("test")  # type: ignore[attr-defined]
    paths = []
    for i, blob in enumerate(blobs):
        (root / f"{i}.png").write_bytes(blob)
        paths.append(str(root / f"{i}.png"))
    return SimpleNamespace(root=root, data=data, student=student, blobs=blobs, paths=paths,
                           served=mlflow.pyfunc.load_model(str(root / "pyfunc")))


def expected(folder: Path, blobs: list[bytes]) -> pd.DataFrame:
    """The saved model's own prediction on `decode_image` pixels of the files."""
    from kdflow.data.images import decode_image
    from kdflow.models.sources import load_saved

    model, spec = load_saved(folder)
    pixels = np.stack([decode_image(b, spec["image_size"], spec["channels"]) for b in blobs])
    with torch.inference_mode():
        probs = torch.softmax(model(torch.from_numpy(pixels)), -1).numpy()
    names = np.asarray(spec["class_names"])
    return pd.DataFrame({"label": names[probs.argmax(1)], "probability": probs.max(1)})


def test_the_pyfunc_predicts_from_image_bytes_like_the_model_on_decoded_pixels(image_pyfunc):
    out = image_pyfunc.served.predict(pd.DataFrame({"image": image_pyfunc.blobs}))
    want = expected(image_pyfunc.student, image_pyfunc.blobs)
    assert list(out.columns) == ["label", "probability"]
    assert list(out["label"]) == list(want["label"])
    np.testing.assert_allclose(out["probability"], want["probability"], rtol=1e-5)
    # The same as on the prepared dataset's pixels: one preprocessing for both.
    from kdflow.models.inference import predict_logits
    from kdflow.models.sources import load_saved

    model, _ = load_saved(image_pyfunc.student)
    probs = torch.softmax(predict_logits(model, image_pyfunc.data.read("test").x), -1).numpy()
    np.testing.assert_allclose(out["probability"], probs.max(1), rtol=1e-5)


def test_the_pyfunc_reads_paths_in_a_path_or_an_image_column(image_pyfunc):
    by_bytes = image_pyfunc.served.predict(pd.DataFrame({"image": image_pyfunc.blobs}))
    for column in ("path", "image"):
        out = image_pyfunc.served.predict(pd.DataFrame({column: image_pyfunc.paths}))
        pd.testing.assert_frame_equal(out, by_bytes)


def test_rows_that_are_not_images_are_named_in_one_error(image_pyfunc, tmp_path):
    (tmp_path / "folder.png").mkdir()
    frame = pd.DataFrame({"image": [image_pyfunc.blobs[0], b"not an image",
                                    str(tmp_path / "missing.png"), image_pyfunc.blobs[1]]})
    with pytest.raises(ValueError) as caught:
        image_pyfunc.served.predict(frame)
    assert str(caught.value) == (
        "2 of 4 rows are not readable images: row 1: not an image file Pillow can read; "
        f"row 2: no such file {tmp_path / 'missing.png'}")


def test_many_bad_rows_are_counted_not_all_listed():
    from kdflow.mlflow.serving import decode_rows

    with pytest.raises(ValueError, match=r"^12 of 12 rows .* row 9: .*; and 2 more$"):
        decode_rows([b"x"] * 12, [8, 8], 1)
    with pytest.raises(ValueError, match=r"row 0: expected the file's bytes or its path, "
                                         r"got NoneType"):
        decode_rows([None], [8, 8], 1)


def test_an_input_without_an_image_column_lists_the_accepted_columns(image_pyfunc):
    from kdflow.mlflow.serving import StudentModel

    model = StudentModel()
    model.load_context(SimpleNamespace(artifacts={"student": str(image_pyfunc.student)}))
    message = ("missing an image column: give `image` (each image file's bytes, or its path) "
               "or `path` (each image file's path); the input's columns: picture, label")
    with pytest.raises(ValueError) as caught:
        model.predict(None, pd.DataFrame({"picture": image_pyfunc.blobs[:1], "label": ["0"]}))
    assert str(caught.value) == message
    # Through MLflow, which drops the columns the signature does not name first.
    with pytest.raises(ValueError, match=r"^missing an image column: give `image`"):
        image_pyfunc.served.predict(pd.DataFrame({"picture": image_pyfunc.blobs[:1]}))
    # A bare list is the images themselves.
    assert len(model.predict(None, image_pyfunc.blobs[:2])) == 2


def test_the_signature_and_input_example_are_a_binary_image_column(image_pyfunc):
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    from kdflow.data.images import decode_image
    from kdflow.mlflow.logged_models import _input_example, _onnx_example, pyfunc_signature

    signature, example = pyfunc_signature(image_pyfunc.student)
    inputs = {c.name: (c.type.name, c.required) for c in signature.inputs.inputs}
    assert inputs == {"image": ("binary", False), "path": ("string", False)}
    assert list(example.columns) == ["image"]
    assert decode_image(example["image"][0], [8, 8], 1).shape == (1, 8, 8)
    assert _input_example(image_pyfunc.student).equals(example)
    spec = json.loads((image_pyfunc.student / "spec.json").read_text())
    pixels = _onnx_example(image_pyfunc.student, spec)
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 1, 8, 8)
    assert (pixels == 128).all()
    # The saved example, parsed as the scoring server parses a request (base64 in JSON
    # for a binary column), is the PNG again and predicts.
    folder = image_pyfunc.root / "pyfunc"
    request = json.loads((folder / "serving_input_example.json").read_text())
    parsed = infer_and_parse_data(request, signature.inputs)
    assert parsed["image"][0] == example["image"][0]
    served = image_pyfunc.served.predict(parsed)
    assert list(served.columns) == ["label", "probability"] and len(served) == 1
    requirements = (folder / "requirements.txt").read_text()
    assert "pillow==" in requirements and "torch==" in requirements
