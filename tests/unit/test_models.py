"""The model zoo: spec parsing, building, normalisation, parameter counts."""

import pytest
import torch

from kdflow.errors import ConfigError
from kdflow.models import Classifier, ModelSpec, build_classifier, count_params, parse_spec


def test_parse_spec_reads_lists_and_numbers_from_the_short_string():
    spec = parse_spec("mlp:hidden=256-256,dropout=0.1")
    assert spec == ModelSpec("mlp", {"hidden": [256, 256], "dropout": 0.1})


def test_parse_spec_reads_a_single_value_as_a_scalar():
    assert parse_spec("mlp:hidden=64").kwargs == {"hidden": 64}


def test_parse_spec_accepts_a_bare_architecture_name():
    assert parse_spec("cnn") == ModelSpec("cnn", {})


def test_parse_spec_accepts_a_dict():
    assert parse_spec({"arch": "cnn", "channels": [8, 16]}) == ModelSpec(
        "cnn", {"channels": [8, 16]}
    )


def test_spec_string_round_trips():
    text = "mlp:hidden=256-256,dropout=0.1"
    spec = parse_spec(text)
    assert str(spec) == text
    assert parse_spec(spec.to_dict()) == spec


def test_unknown_architecture_names_option_and_known_architectures():
    with pytest.raises(ConfigError) as err:
        parse_spec("transformer:layers=2", option="--teachers")
    assert str(err.value).startswith("--teachers: unknown architecture 'transformer'")
    assert "known: cnn, mlp" in str(err.value)
    assert err.value.option == "--teachers"


def test_unknown_keyword_names_it_and_the_accepted_ones():
    with pytest.raises(ConfigError) as err:
        parse_spec("mlp:hidden=32,layers=2")
    assert str(err.value) == "--student: mlp takes dropout, hidden; unknown: layers"


def test_unknown_keyword_in_a_dict_spec_is_refused():
    with pytest.raises(ConfigError, match="unknown: width"):
        parse_spec({"arch": "mlp", "width": 3})


def test_option_without_value_is_refused_with_the_syntax_to_use():
    with pytest.raises(ConfigError, match=r"--student: cannot parse 'hidden'.*key=value"):
        parse_spec("mlp:hidden")


def test_uncastable_keyword_value_fails_when_building():
    with pytest.raises(ConfigError, match="cannot build mlp:hidden=wide"):
        build_classifier("mlp:hidden=wide", [4], 3, 4)


def test_cnn_needs_a_three_dimensional_input_shape():
    with pytest.raises(ConfigError) as err:
        build_classifier("cnn", [64], 10, 64)
    assert "cnn needs --input-shape C,H,W" in str(err.value)
    assert err.value.option == "--input-shape"


def test_cnn_classifies_images_stored_as_flat_features():
    model = build_classifier("cnn:channels=4-8,hidden=16", [1, 8, 8], 10, 64)
    assert model(torch.randn(5, 64)).shape == (5, 10)


def test_cnn_skips_pooling_on_tiny_images():
    model = build_classifier("cnn:channels=4-4,hidden=8", [1, 2, 2], 3, 4)
    assert model(torch.randn(2, 4)).shape == (2, 3)


def test_mlp_classifies_flat_features():
    model = build_classifier("mlp:hidden=8-8,dropout=0.1", [6], 4, 6)
    assert model(torch.randn(3, 6)).shape == (3, 4)


def test_input_shape_that_does_not_hold_the_features_is_refused():
    with pytest.raises(ConfigError) as err:
        build_classifier("mlp", [1, 8, 8], 10, 60)
    assert str(err.value) == ("--input-shape 1,8,8 holds 64 values but the data has 60 features")


def test_count_params_counts_weights_and_biases_only():
    model = build_classifier("mlp:hidden=8", [4], 3, 4)
    # Linear(4, 8) + Linear(8, 3); the mean/std buffers are not parameters.
    assert count_params(model) == (4 * 8 + 8) + (8 * 3 + 3)


def test_normalisation_buffers_travel_in_the_state_dict():
    model = build_classifier("mlp:hidden=8", [4], 3, 4)
    state = model.state_dict()
    assert state["mean"].tolist() == [0.0] * 4
    assert state["std"].tolist() == [1.0] * 4


def test_forward_normalises_features_before_the_network():
    model = build_classifier("mlp:hidden=8", [3], 2, 3)
    model.set_normalisation(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 0.5]))
    x = torch.tensor([[3.0, 6.0, 3.5]])
    torch.testing.assert_close(model(x), model.net(torch.tensor([[1.0, 1.0, 1.0]])))


def test_constant_feature_with_zero_std_is_left_unscaled():
    model = build_classifier("mlp:hidden=8", [3], 2, 3)
    model.set_normalisation(torch.tensor([0.0, 5.0, 0.0]), torch.tensor([2.0, 0.0, 1e-12]))
    assert model.std.tolist() == [2.0, 1.0, 1.0]
    assert torch.isfinite(model(torch.tensor([[1.0, 5.0, 7.0]]))).all()


def test_classifier_keeps_its_spec_and_shapes():
    spec = parse_spec("mlp:hidden=8")
    model = Classifier(spec, [2, 3], 5, 6)
    assert (model.spec, model.input_shape, model.n_classes) == (spec, [2, 3], 5)
