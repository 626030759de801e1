"""The `python:` model source (`kdflow.models.python_source`): a user's own nn.Module from
an importable factory, normalised and reshaped like a zoo model, saved as safetensors +
spec.json and rebuilt from its factory; every bad input a one-line ConfigError naming the
option."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kdflow.config import TeacherConfig
from kdflow.data.prepared import DatasetMeta
from kdflow.errors import ConfigError, ModelFormatError
from kdflow.models.python_source import FactoryModel, PythonFactory, parse
from kdflow.models.sources import build, load_saved, source_for
from tests.fixtures import user_models

FIX = "python:tests.fixtures.user_models"
META = DatasetMeta("label", [f"px{i}" for i in range(64)], [str(c) for c in range(3)],
                   [1, 8, 8], "sha", {"train": 10, "val": 2, "test": 2}, "unit")


def refused(spec: str, option: str = "--student", meta: DatasetMeta = META) -> str:
    """The message of the ConfigError that building `spec` raises: one line, naming `option`."""
    source = source_for(spec)
    with pytest.raises(ConfigError) as err:
        source.check(spec, option)
        source.build(spec, meta, option=option)  # type: ignore[call-arg]
    message = str(err.value)
    assert message.startswith(f"{option}: ") and "\n" not in message, message
    return message


def test_a_python_spec_picks_the_factory_source():
    source = source_for(f"{FIX}:mlp")
    assert isinstance(source, PythonFactory)
    assert (source.kind, source.fetches) == ("python", False)
    assert source.prepare(f"{FIX}:mlp", None, Path("unused")) is False  # type: ignore[arg-type]
    assert source_for("mlp:hidden=8").kind == "zoo"


def test_kwargs_parse_as_ints_floats_bools_strings_and_dashed_lists():
    spec = parse(f"{FIX}:Recorded:width=8,rate=0.5,deep=true,quiet=False,act=gelu,sizes=4-8,"
                 "lr=1e-3,shift=-2")
    assert spec.factory == "tests.fixtures.user_models:Recorded"
    assert spec.kwargs == {"width": 8, "rate": 0.5, "deep": True, "quiet": False,
                           "act": "gelu", "sizes": [4, 8], "lr": 1e-3, "shift": -2}
    assert parse(str(spec)) == spec
    model = build(str(spec), META)
    assert isinstance(model, FactoryModel)
    assert model.net.called == {"n_classes": 3, "input_shape": [1, 8, 8], **spec.kwargs}


def test_the_wrapper_normalises_reshapes_and_reads_like_a_zoo_model():
    mean, std = [float(i) for i in range(64)], [2.0] * 63 + [0.0]
    model = build(f"{FIX}:SmallCnn:channels=2", META, (mean, std))
    assert (model.input_shape, model.n_classes) == ([1, 8, 8], 3)
    assert "SmallCnn" in str(model.spec)
    assert torch.equal(model.state_dict()["mean"], torch.tensor(mean))
    assert model.state_dict()["std"][-1] == 1.0  # a constant feature stays unscaled
    x = torch.randn(5, 64)
    scaled = (x - torch.tensor(mean)) / torch.tensor([2.0] * 63 + [1.0])
    torch.testing.assert_close(model(x), model.net(scaled.view(5, 1, 8, 8)))
    source = source_for(f"{FIX}:SmallCnn")
    assert source.head(model) is model.net.fc
    assert source.layers(model)["fc"] is source.layers(model)["net.fc"] is model.net.fc
    assert source.attention_maps(model) == [] and not source.tokens_last(model)


def test_save_and_load_give_the_same_logits_from_safetensors_and_the_spec(tmp_path):
    source = source_for(f"{FIX}:mlp")
    model = build(f"{FIX}:mlp:hidden=8-4,bias=false", META, ([0.5] * 64, [3.0] * 64))
    source.save(model, tmp_path / "m", META, {"role": "teacher"})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.safetensors",
                                                                 "spec.json"]
    spec = json.loads((tmp_path / "m" / "spec.json").read_text())
    assert spec["kind"] == "python" and spec["role"] == "teacher"
    assert spec["factory"] == "tests.fixtures.user_models:mlp"
    assert spec["kwargs"] == {"hidden": [8, 4], "bias": False}
    assert spec["model"] == {"arch": "python", "factory": spec["factory"], "hidden": [8, 4],
                             "bias": False}
    assert spec["source"] == f"{FIX}:mlp:hidden=8-4,bias=false"
    assert (spec["input_shape"], spec["n_features"], spec["n_classes"]) == ([1, 8, 8], 64, 3)
    assert spec["class_names"] == META.classes and spec["feature_names"] == META.feature_columns
    loaded, saved = load_saved(tmp_path / "m")
    assert isinstance(loaded, FactoryModel) and not loaded.training and saved == spec
    x = torch.randn(4, 64)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    torch.testing.assert_close(loaded.std, torch.full((64,), 3.0))


def test_tampered_weights_are_refused(tmp_path):
    source = source_for(f"{FIX}:mlp")
    source.save(build(f"{FIX}:mlp", META), tmp_path / "m", META, {})
    with (tmp_path / "m" / "model.safetensors").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelFormatError, match="SHA-256 does not match"):
        load_saved(tmp_path / "m")


def test_a_saved_model_whose_factory_no_longer_imports_names_its_folder(tmp_path, monkeypatch):
    code = tmp_path / "code"
    code.mkdir()
    (code / "vanishing_models.py").write_text(
        "from tests.fixtures.user_models import mlp as make\n"
    )
    monkeypatch.syspath_prepend(str(code))
    spec = "python:vanishing_models:make:hidden=4"
    source_for(spec).save(build(spec, META), tmp_path / "m", META, {})
    (code / "vanishing_models.py").unlink()
    monkeypatch.delitem(sys.modules, "vanishing_models")
    importlib.invalidate_caches()
    with pytest.raises(ModelFormatError) as err:
        load_saved(tmp_path / "m")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'm'}: its factory vanishing_models:make ")
    assert "No module named 'vanishing_models'" in message and "\n" not in message


def test_text_data_is_refused():
    text = DatasetMeta("label", [], ["a", "b"], [1], "sha", {}, "unit", kind="text")
    assert refused(f"{FIX}:mlp", meta=text) == (
        "--student: python: factories read numeric columns; for text give hf:, hf-config: "
        "or hf-from-teacher:"
    )


def test_a_spec_without_a_factory_is_refused_naming_the_option():
    for spec in ("python:", "python:tests.fixtures.user_models", "python::mlp"):
        with pytest.raises(ConfigError, match="^--teachers: .* names no factory; write python:"):
            source_for(spec).check(spec, "--teachers")
    assert "cannot parse 'hidden'" in refused(f"{FIX}:mlp:hidden")
    assert "sets n_classes" in refused(f"{FIX}:mlp:n_classes=4")


def test_a_module_that_does_not_import_says_it_must_be_importable(tmp_path, monkeypatch):
    message = refused("python:no_such_pkg.models:make", "--teachers")
    assert "cannot import no_such_pkg.models (ModuleNotFoundError: No module named " in message
    assert "importable in the image" in message
    (tmp_path / "broken_models.py").write_text("raise RuntimeError('half-written')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "importing broken_models raised RuntimeError: half-written" in refused(
        "python:broken_models:make"
    )


def test_a_missing_or_uncallable_factory_is_refused():
    assert "has no 'nothing_here'" in refused(f"{FIX}:nothing_here", "--teachers")
    assert "NOT_CALLABLE is a int, not callable" in refused(f"{FIX}:NOT_CALLABLE")


def test_a_factory_that_raises_or_returns_no_module_is_refused():
    assert "raised ValueError: width must be even" in refused(f"{FIX}:raises")
    assert "raised TypeError: " in refused(f"{FIX}:mlp:colour=red")  # an unknown argument
    assert "returned a str; it must return an nn.Module" in refused(f"{FIX}:not_a_module")


def test_a_module_whose_output_is_not_batch_by_classes_is_refused():
    message = refused(f"{FIX}:wrong_shape", "--teachers")
    assert "returned [2, 4] for a 2 × [1, 8, 8] batch" in message
    assert "failed on a 2 × [1, 8, 8] float batch: RuntimeError" in refused(
        f"{FIX}:fails_forward"
    )


def test_a_python_model_is_fetched_never():
    with pytest.raises(ConfigError, match="built and trained, not fetched"):
        source_for(f"{FIX}:mlp").fetch(f"{FIX}:mlp", Path("unused"), None)


def test_a_factory_model_trains_through_the_loop_and_loads_back(digits_dataset, tmp_path):
    from kdflow.data.sources import open_source
    from kdflow.distill.driver import train_teacher
    from kdflow.models.inference import accuracy
    from kdflow.models.onnx import export_with_parity

    spec = f"{FIX}:SmallCnn:channels=4"
    result = train_teacher(str(digits_dataset), spec, TeacherConfig(teacher_epochs=3), 0,
                           tmp_path / "t")
    assert result["val_accuracy"] > 0.6  # chance is 0.1
    model, saved = load_saved(tmp_path / "t")
    assert saved["kind"] == "python" and isinstance(model.net, user_models.SmallCnn)
    assert isinstance(model.net.fc, nn.Linear)
    val = open_source(str(digits_dataset)).read("val")
    assert accuracy(model, val) == pytest.approx(result["val_accuracy"], abs=1e-6)
    _, parity = export_with_parity(model, 64, tmp_path / "t.onnx", val.x[:64])
    assert parity.predictions_match and parity.logits_close
