"""Model sources (`kdflow.models.sources`, `kdflow.models.zoo_source`, the registered-model
source): a spec's prefix picks its source, a saved folder its loader, and the source names
the layers that feature and attention distillation pair."""

from __future__ import annotations

import json

import pytest
import torch

from kdflow.config import DistillConfig
from kdflow.data.prepared import DatasetMeta
from kdflow.distill.hints import make_plan
from kdflow.errors import ConfigError
from kdflow.models.sources import build, load_saved, source_for

META = DatasetMeta("label", [f"px{i}" for i in range(64)], [str(c) for c in range(3)],
                   [1, 8, 8], "sha", {"train": 10, "val": 2, "test": 2}, "unit")


def test_a_spec_prefix_picks_its_source():
    assert source_for("mlp:hidden=8").kind == "zoo"
    assert source_for("models:/teacher@champion").kind == "registered"
    assert source_for("models:/teacher@champion").fetches
    assert not source_for("cnn").fetches


def test_a_zoo_model_is_built_for_the_data_and_normalises_with_the_given_statistics():
    model = build("cnn:channels=4,hidden=8", META, ([1.0] * 64, [2.0] * 64))
    assert model(torch.zeros(5, 64)).shape == (5, 3)
    assert torch.equal(model.state_dict()["mean"], torch.ones(64))
    assert torch.equal(model.state_dict()["std"], torch.full((64,), 2.0))


def test_a_bad_spec_is_refused_naming_the_option():
    with pytest.raises(ConfigError, match="^--teachers: unknown architecture 'bert'"):
        build("bert:layers=2", META, option="--teachers")


def test_registered_models_are_fetched_not_built_and_zoo_models_built_not_fetched(tmp_path):
    with pytest.raises(ConfigError, match="is fetched .as a teacher., not built"):
        build("models:/teacher@champion", META)
    with pytest.raises(ConfigError, match="names no model"):
        source_for("models:/").check("models:/", "--teachers")
    with pytest.raises(ConfigError, match="built and trained, not fetched"):
        source_for("mlp").fetch("mlp", tmp_path, None)


def test_a_saved_model_is_loaded_by_the_source_its_spec_names(tmp_path):
    model = build("mlp:hidden=8", META)
    source_for("mlp").save(model, tmp_path / "m", META, {"role": "teacher"})
    spec = json.loads((tmp_path / "m" / "spec.json").read_text())
    assert (spec["kind"], spec["role"]) == ("zoo", "teacher")
    loaded, _ = load_saved(tmp_path / "m")
    x = torch.randn(4, 64)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    spec["kind"] = "onnx-graph"
    (tmp_path / "m" / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(
        ConfigError, match="a model of kind 'onnx-graph'; this kdflow loads hf, python, zoo"
    ):
        load_saved(tmp_path / "m")


def test_zoo_layers_are_named_with_or_without_the_net_prefix():
    zoo = source_for("cnn")
    model = build("cnn:channels=4-8,hidden=16", META)
    assert zoo.layers(model)["net.2"] is model.net[2]
    assert zoo.layers(model)["2"] is model.net[2]
    assert zoo.head(model) is model.net[-1]
    assert zoo.attention_maps(model) == []
    assert zoo.tokens_last(build("transformer", META))
    assert not zoo.tokens_last(model)


def test_an_unknown_hint_layer_lists_the_layers_and_names_the_option():
    cfg = DistillConfig(teacher_mode="online", feature_weight=1.0,
                        feature_layers=["net.0=blocks.0"])
    with pytest.raises(ConfigError) as err:
        make_plan(cfg, build("mlp:hidden=8", META), build("mlp:hidden=8", META))
    assert str(err.value).startswith(
        "--feature-layers: no layer 'blocks.0' in the student (mlp:hidden=8); layers: net, net.0"
    )
    assert err.value.option == "--feature-layers"


@pytest.mark.parametrize(
    ("spec", "role", "given", "expected"),
    [
        ("mlp:hidden=12", "student", None, 3e-3),
        ("mlp:hidden=12", "teacher", None, 1e-3),
        ("python:pkg.mod:make", "baseline", None, 3e-3),
        ("hf-config:bert:hidden_size=32", "teacher", None, 3e-4),
        ("hf-from-teacher:num_hidden_layers=2", "baseline", None, 3e-4),
        ("hf:/models/bert", "teacher", None, 5e-5),
        ("hf:/models/bert", "teacher", 1e-2, 1e-2),
    ],
)
def test_the_learning_rate_defaults_to_the_sources_own(spec, role, given, expected) -> None:
    from kdflow.models.sources import learning_rate

    assert learning_rate(spec, role, given) == expected
