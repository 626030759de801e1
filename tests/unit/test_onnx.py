"""The student's ONNX export (`kdflow.models.onnx`): same predictions as PyTorch, dynamic
batch, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdflow.errors import ModelFormatError
from kdflow.models.artifacts import save_model
from kdflow.models.onnx import (
    check_parity,
    export_checked,
    export_onnx,
    export_with_parity,
    onnx_session,
    require_parity,
    run_onnx,
)
from kdflow.models.zoo import build_classifier


def normalised(model):
    torch.manual_seed(0)
    model.set_normalisation(torch.rand(64) * 8, torch.rand(64) * 4)
    return model.eval()


@pytest.fixture(scope="module")
def mlp_export(tmp_path_factory):
    torch.manual_seed(0)
    model = normalised(build_classifier("mlp:hidden=16", [1, 8, 8], 10, 64))
    path = export_onnx(model, 64, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return model, path


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_onnx_student_gives_pytorchs_predictions_at_any_batch_size(mlp_export, rows):
    model, path = mlp_export
    x = np.random.default_rng(rows).uniform(0, 16, (rows, 64)).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    parity = check_parity(expected, run_onnx(onnx_session(path), x))
    assert parity.predictions_match and parity.logits_close
    assert parity.rows == rows and parity.max_abs_diff < 1e-4


def test_onnx_graph_takes_named_features_with_a_dynamic_batch_axis(mlp_export):
    _, path = mlp_export
    session = onnx_session(path)
    (features,) = session.get_inputs()
    (logits,) = session.get_outputs()
    assert (features.name, features.shape, features.type) == (
        "features", ["batch", 64], "tensor(float)"
    )
    assert (logits.name, logits.shape) == ("logits", ["batch", 10])


def test_onnx_export_of_a_cnn_keeps_the_reshape_inside_the_graph(tmp_path):
    torch.manual_seed(1)
    model = normalised(build_classifier("cnn:channels=4-8,hidden=16", [1, 8, 8], 3, 64))
    path = export_onnx(model, 64, tmp_path / "cnn.onnx")
    x = np.random.default_rng(0).uniform(0, 16, (32, 64)).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    require_parity(check_parity(expected, run_onnx(onnx_session(path), x)))


def test_parity_check_counts_rows_whose_prediction_differs():
    torch_logits = np.array([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0]], np.float32)
    onnx_logits = np.array([[2.0, 1.0], [1.0, 0.0], [3.0, 0.0]], np.float32)
    parity = check_parity(torch_logits, onnx_logits)
    assert (parity.predictions_match, parity.mismatched_rows, parity.max_abs_diff) == (
        False, 1, 1.0
    )
    with pytest.raises(ModelFormatError, match=r"1 of 3 predictions differ, max \|logit "
                                               r"difference\| 1.00e\+00"):
        require_parity(parity)


def test_parity_check_refuses_logits_beyond_tolerance_even_when_argmax_agrees():
    parity = check_parity(np.array([[5.0, 0.0]]), np.array([[5.01, 0.0]]))
    assert parity.predictions_match and not parity.logits_close
    with pytest.raises(ModelFormatError, match="0 of 1 predictions differ"):
        require_parity(parity)


def test_parity_check_refuses_a_different_output_shape():
    with pytest.raises(ModelFormatError, match=r"shape \(2, 3\), PyTorch \(2, 2\)"):
        check_parity(np.zeros((2, 2)), np.zeros((2, 3)))


def test_onnx_runtime_refuses_a_file_that_is_not_onnx(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x80\x04not a protobuf")
    with pytest.raises(ModelFormatError, match="ONNX Runtime cannot load it"):
        onnx_session(bad)


@pytest.mark.parametrize(
    ("spec", "shape"),
    [
        ("cnn1d:channels=4-8,kernel=3,hidden=16", [1, 64]),
        ("resnet:depth=1,width=4", [1, 8, 8]),
        ("transformer:dim=16,depth=2,heads=4,patch=4", [1, 8, 8]),
        ("transformer:dim=8,depth=1,heads=2", [8, 8]),
    ],
)
def test_onnx_export_of_every_zoo_family_matches_pytorch(tmp_path, spec, shape):
    torch.manual_seed(2)
    model = normalised(build_classifier(spec, shape, 5, 64))
    path = export_onnx(model, 64, tmp_path / "model.onnx")
    x = np.random.default_rng(1).uniform(0, 16, (33, 64)).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    session = onnx_session(path)
    assert session.get_inputs()[0].shape == ["batch", 64]
    require_parity(check_parity(expected, run_onnx(session, x)))


def test_export_with_parity_returns_a_session_that_predicts_like_pytorch(mlp_export, tmp_path):
    model, _ = mlp_export
    x = np.random.default_rng(3).uniform(0, 16, (9, 64)).astype(np.float32)
    session, parity = export_with_parity(model, 64, tmp_path / "m.onnx", x)
    assert (parity.rows, parity.predictions_match, parity.logits_close) == (9, True, True)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_onnx(session, x), expected, atol=1e-4, rtol=1e-3)


def test_export_with_parity_refuses_an_export_that_disagrees_naming_what(mlp_export, tmp_path):
    model, _ = mlp_export
    x = np.random.default_rng(4).uniform(0, 16, (5, 64)).astype(np.float32)
    with torch.inference_mode():
        wrong = -model(torch.from_numpy(x)).numpy()  # what PyTorch "said": the opposite
    with pytest.raises(ModelFormatError, match=r"^the student's export disagrees with the "
                                               r"PyTorch model: 5 of 5 predictions differ"):
        export_with_parity(model, 64, tmp_path / "m.onnx", x, wrong, "the student's export")


def test_export_checked_writes_model_onnx_of_a_saved_student(mlp_export, tmp_path):
    model, _ = mlp_export
    save_model(model, tmp_path / "student", [str(c) for c in range(10)],
               [f"f{i}" for i in range(64)])
    path = export_checked(tmp_path / "student", tmp_path / "out")
    assert path == tmp_path / "out" / "model.onnx"
    x = np.random.default_rng(5).uniform(0, 16, (12, 64)).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    require_parity(check_parity(expected, run_onnx(onnx_session(path), x)))


def test_the_example_batch_is_the_first_rows_repeated_or_zeros_for_a_feature_count():
    from kdflow.models.onnx import example_batch

    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    assert example_batch(x).dtype == np.float32 and example_batch(x).tolist() == x[:2].tolist()
    one = np.ones((1, 2, 5), np.int64)
    assert example_batch(one).shape == (2, 2, 5) and example_batch(one).dtype == np.int64
    assert example_batch(np.zeros((0, 2, 5), np.int64)).shape == (2, 2, 5)
    assert example_batch(7).tolist() == np.zeros((2, 7), np.float32).tolist()


def test_export_from_example_rows_equals_export_from_a_feature_count(mlp_export, tmp_path):
    model, _ = mlp_export
    x = np.random.default_rng(6).uniform(0, 16, (40, 64)).astype(np.float32)
    session, parity = export_with_parity(model, x, tmp_path / "m.onnx", x)
    assert (parity.rows, parity.predictions_match, parity.logits_close) == (40, True, True)
    assert session.get_inputs()[0].shape == ["batch", 64]


def test_packed_int64_inputs_export_with_a_dynamic_batch_axis(tmp_path):
    class Bag(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(20, 4)
            self.head = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mask = x[:, 1].unsqueeze(-1).float()
            pooled = (self.embed(x[:, 0]) * mask).sum(1) / mask.sum(1).clamp(min=1)
            return self.head(pooled)

    torch.manual_seed(3)
    model = Bag().eval()
    rng = np.random.default_rng(7)
    x = np.stack([rng.integers(0, 20, (17, 6)), rng.integers(0, 2, (17, 6))], axis=1)
    session, parity = export_with_parity(model, x, tmp_path / "bag.onnx", x)
    (features,) = session.get_inputs()
    assert (features.name, features.shape, features.type) == (
        "features", ["batch", 2, 6], "tensor(int64)"
    )
    assert parity.rows == 17 and parity.predictions_match


def test_a_model_the_exporter_refuses_is_not_exportable_in_one_line(mlp_export, tmp_path,
                                                                     monkeypatch):
    from kdflow.models.onnx import NotExportable

    model, _ = mlp_export

    def refuses(*args, **kwargs):
        raise TypeError("cannot trace this\nsecond line of a long story")

    monkeypatch.setattr(torch.onnx, "export", refuses)
    with pytest.raises(NotExportable, match=r"^cannot export the model to ONNX: TypeError: "
                                            r"cannot trace this$"):
        export_onnx(model, 64, tmp_path / "m.onnx")
    assert issubclass(NotExportable, ModelFormatError)


def test_an_export_onnx_runtime_cannot_load_is_not_exportable(mlp_export, tmp_path, monkeypatch):
    from kdflow.models import onnx
    from kdflow.models.onnx import NotExportable

    model, _ = mlp_export

    def unloadable(path, threads=1):
        raise ModelFormatError(f"{path}: ONNX Runtime cannot load it: no kernel")

    monkeypatch.setattr(onnx, "onnx_session", unloadable)
    x = np.zeros((3, 64), np.float32)
    with pytest.raises(NotExportable, match="ONNX Runtime cannot load it: no kernel"):
        export_with_parity(model, x, tmp_path / "m.onnx", x)


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory):
    """A prepared dataset of 1 × 8 × 8 digit PNGs (3 classes)."""
    from kdflow.data.sources import open_source
    from tests.unit.image_helpers import prepared_images

    return open_source(str(prepared_images(tmp_path_factory.mktemp("images") / "ds")))


@pytest.mark.parametrize("spec", ["cnn", "mlp:hidden=16"])
def test_image_models_export_with_uint8_pixels_and_match_on_the_test_images(
    digit_images, tmp_path, spec
):
    from kdflow.models.sources import build

    torch.manual_seed(0)
    model = build(spec, digit_images.meta, digit_images.input_stats()).eval()
    x = digit_images.read("test").x
    assert x.dtype == np.uint8
    session, parity = export_with_parity(model, x, tmp_path / "m.onnx", x)
    (features,) = session.get_inputs()
    assert (features.type, features.shape) == ("tensor(uint8)", ["batch", 1, 8, 8])
    assert parity.rows == len(x) and parity.predictions_match and parity.logits_close
    # Batches of any size; pixels given as another dtype are cast to the graph's uint8.
    with torch.inference_mode():
        expected = model(torch.from_numpy(x[:5])).numpy()
    for given in (x[:5], x[:5].astype(np.int64)):
        require_parity(check_parity(expected, run_onnx(session, given, batch_size=2)))


def test_a_saved_image_model_is_export_checked_on_uint8_pixels(digit_images, tmp_path):
    from kdflow.models.onnx import check_inputs
    from kdflow.models.sources import build, load_saved, source_for

    torch.manual_seed(0)
    model = build("cnn", digit_images.meta, digit_images.input_stats())
    folder = source_for("cnn").save(model, tmp_path / "student", digit_images.meta, {})
    loaded, spec = load_saved(folder)
    x = check_inputs(loaded, spec)
    assert x.dtype == np.uint8 and x.shape == (32, 1, 8, 8)
    assert x.min() < 10 and x.max() > 245  # the whole range of a pixel
    path = export_checked(folder, tmp_path / "out")
    assert path is not None
    (features,) = onnx_session(path).get_inputs()
    assert (features.type, features.shape) == ("tensor(uint8)", ["batch", 1, 8, 8])
