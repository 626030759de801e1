"""train_teacher: one ensemble member trained with its own seed, recorded on its model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kfp import dsl

from components import train_teacher
from kdflow.errors import ConfigError

train = train_teacher.make("kdflow:test").python_func


def run(artifact, configs, dataset: Path, spec: str, seed: int, index: int) -> dict:
    out = {"model": artifact(dsl.Model, "model"), "metrics": artifact(dsl.Metrics, "metrics"),
           "curves": artifact(dsl.HTML, "curves")}
    train(dataset=dsl.Dataset(uri=str(dataset)), spec=spec, seed=seed, index=index,
          teacher_config=configs(teacher_epochs=2)["teacher_config"], tracking_uri="", **out)
    return out


def test_a_member_is_saved_with_its_spec_seed_and_position(artifact, configs, digits_dataset):
    out = run(artifact, configs, digits_dataset, "mlp:hidden=16", seed=11, index=2)
    model = Path(out["model"].path)
    assert {"model.safetensors", "spec.json"} <= {p.name for p in model.iterdir()}
    meta = out["model"].metadata
    assert (meta["spec"], meta["seed"], meta["index"]) == ("mlp:hidden=16", 11, 2)
    assert [e["epoch"] for e in meta["history"]] == [1, 2]  # teacher_epochs from its settings
    assert meta["params"] == out["metrics"].metadata["params"] > 0
    assert 0.2 < out["metrics"].metadata["val_accuracy"] <= 1  # far better than chance (0.1)
    assert "<" in Path(out["curves"].path).read_text()
    saved = json.loads((model / "spec.json").read_text())
    assert (saved["role"], saved["seed"], saved["index"]) == ("teacher", 11, 2)


def test_an_unknown_architecture_is_refused_with_the_known_ones(artifact, configs,
                                                                digits_dataset):
    with pytest.raises(ConfigError, match="unknown architecture 'nope'.*known: cnn"):
        run(artifact, configs, digits_dataset, "nope:x=1", seed=0, index=0)
