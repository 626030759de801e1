"""Model artifacts: safetensors + spec.json round trip, and everything load_model refuses."""

import json

import pytest
import torch

from kdflow.errors import ModelFormatError
from kdflow.models.artifacts import (
    flatten_optimizer_state,
    load_model,
    load_tensors,
    save_model,
    save_tensors,
    sha256_file,
    unflatten_optimizer_state,
)
from kdflow.models.zoo import build_classifier

CLASSES = ["a", "b", "c"]
FEATURES = ["f0", "f1", "f2", "f3"]


class CreatesMarkerWhenUnpickled:
    """A pickle payload: unpickling it calls open(marker, "w"), which creates the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def make_model(seed=0, spec="mlp:hidden=8-8"):
    torch.manual_seed(seed)
    model = build_classifier(spec, [4], 3, 4)
    model.set_normalisation(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.5, 1.0, 2.0, 0]))
    return model.eval()


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "model"
    save_model(make_model(), folder, CLASSES, FEATURES, extra={"run_id": "r1"})
    return folder


def rewrite_spec(folder, **changes):
    spec = json.loads((folder / "spec.json").read_text())
    spec.update(changes)
    (folder / "spec.json").write_text(json.dumps(spec))


def plant_pickle(folder, marker):
    """Replace the weights with torch.save (pickle) bytes and make the hash match them."""
    weights = folder / "model.safetensors"
    state = dict(make_model().state_dict())
    state["payload"] = CreatesMarkerWhenUnpickled(marker)
    torch.save(state, weights)
    rewrite_spec(folder, weights_sha256=sha256_file(weights))
    return weights


def test_loaded_model_gives_identical_outputs(saved):
    x = torch.randn(7, 4)
    loaded, _ = load_model(saved)
    torch.testing.assert_close(loaded(x), make_model()(x), rtol=0, atol=0)


def test_spec_records_shapes_names_and_extra_keys(saved):
    _, spec = load_model(saved)
    assert spec["model"] == {"arch": "mlp", "hidden": [8, 8]}
    assert (spec["input_shape"], spec["n_features"], spec["n_classes"]) == ([4], 4, 3)
    assert (spec["class_names"], spec["feature_names"]) == (CLASSES, FEATURES)
    assert spec["run_id"] == "r1"
    assert spec["weights_sha256"] == sha256_file(saved / "model.safetensors")


def test_loaded_model_is_in_eval_mode(tmp_path):
    model = make_model(spec="mlp:hidden=8,dropout=0.5").train()
    save_model(model, tmp_path, CLASSES, FEATURES)
    loaded, _ = load_model(tmp_path)
    assert not loaded.training


def test_tampered_weights_are_refused(saved):
    weights = saved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="SHA-256 does not match spec.json.*modified"):
        load_model(saved)


def test_pickled_weights_are_refused_without_unpickling(saved, tmp_path):
    marker = tmp_path / "unpickled.marker"
    plant_pickle(saved, marker)
    with pytest.raises(ModelFormatError, match="not a safetensors file"):
        load_model(saved)
    assert not marker.exists()


def test_planted_pickle_would_run_code_if_unpickled(saved, tmp_path):
    # Keeps the refusal test honest: the payload it plants is live.
    marker = tmp_path / "unpickled.marker"
    weights = plant_pickle(saved, marker)
    with weights.open("rb") as handle:  # a path ending .safetensors would skip the pickle
        torch.load(handle, weights_only=False)
    assert marker.exists()


def test_folder_without_spec_is_refused_listing_what_it_holds(saved):
    (saved / "spec.json").unlink()
    with pytest.raises(ModelFormatError, match=r"no spec.json.*\(found: model.safetensors\)"):
        load_model(saved)


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(ModelFormatError, match="no spec.json; a kdflow model is a folder"):
        load_model(tmp_path / "nowhere")


def test_spec_that_is_not_json_is_refused(saved):
    (saved / "spec.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="spec.json: not valid JSON"):
        load_model(saved)


def test_spec_missing_keys_is_refused_naming_them(saved):
    spec = json.loads((saved / "spec.json").read_text())
    del spec["n_classes"], spec["weights_sha256"]
    (saved / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(ModelFormatError, match="missing keys n_classes, weights_sha256"):
        load_model(saved)


def test_folder_without_weights_is_refused(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="no model.safetensors"):
        load_model(saved)


def test_weights_that_do_not_fit_the_architecture_are_refused(saved):
    rewrite_spec(saved, model={"arch": "mlp", "hidden": [16]})
    with pytest.raises(ModelFormatError, match="do not fit the spec's architecture"):
        load_model(saved)


def adam_setup(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    return model, torch.optim.Adam(model.parameters(), lr=0.05, betas=(0.8, 0.95))


def adam_steps(model, optimizer, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 4, generator=gen)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    model, optimizer = adam_setup(0)
    adam_steps(model, optimizer, 3, seed=1)
    tensors, meta = flatten_optimizer_state(optimizer.state_dict())
    save_tensors(
        {**tensors, **{f"model.{k}": v for k, v in model.state_dict().items()}},
        meta,
        tmp_path / "ckpt",
    )

    stored, stored_meta = load_tensors(tmp_path / "ckpt")
    resumed, resumed_opt = adam_setup(99)
    resumed.load_state_dict(
        {k.removeprefix("model."): v for k, v in stored.items() if k.startswith("model.")}
    )
    resumed_opt.load_state_dict(unflatten_optimizer_state(stored, stored_meta))

    adam_steps(model, optimizer, 3, seed=2)
    adam_steps(resumed, resumed_opt, 3, seed=2)
    for original, restored in zip(model.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(restored, original, rtol=0, atol=0)
