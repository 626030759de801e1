"""The model zoo: spec parsing, building, normalisation, parameter counts."""

import math

import pytest
import torch

from kdflow.errors import ConfigError
from kdflow.models.zoo import (
    Classifier,
    ModelSpec,
    attention_modules,
    build_classifier,
    count_params,
    flops,
    parse_spec,
    profile,
)


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
        parse_spec("vit:layers=2", option="--teachers")
    assert str(err.value).startswith("--teachers: unknown architecture 'vit'")
    assert "known: cnn, cnn1d, mlp, resnet, transformer" in str(err.value)
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


def test_uncastable_keyword_value_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="mlp:hidden=wide: hidden must be whole numbers >= 1"):
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


# ------------------------------------------------------------- cnn1d, resnet, transformer


@pytest.mark.parametrize(
    ("spec", "shape"),
    [
        ("cnn1d:channels=4-8,kernel=3,hidden=16", [2, 16]),
        ("cnn1d:channels=4", [16]),
        ("resnet:depth=1,width=4", [1, 8, 8]),
        ("resnet:depth=2,width=4", [3, 5, 7]),
        ("transformer:dim=8,depth=1,heads=2", [1, 8, 8]),
        ("transformer:dim=8,heads=4,patch=2", [2, 4, 4]),
        ("transformer:dim=8,heads=2", [6, 5]),
        ("transformer:dim=8,heads=2", [12]),
    ],
)
def test_every_family_classifies_flat_features_reshaped_to_its_input(spec, shape):
    n = math.prod(shape)
    model = build_classifier(spec, shape, 3, n)
    logits = model(torch.randn(4, n))
    assert logits.shape == (4, 3)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("spec", "shape", "needs"),
    [
        ("cnn1d", [1, 8, 8], "cnn1d needs --input-shape L or C,L"),
        ("resnet", [64], "resnet needs --input-shape C,H,W"),
    ],
)
def test_family_with_the_wrong_input_rank_names_the_input_shape_option(spec, shape, needs):
    with pytest.raises(ConfigError) as err:
        build_classifier(spec, shape, 3, math.prod(shape))
    assert needs in str(err.value)
    assert err.value.option == "--input-shape"


@pytest.mark.parametrize(
    ("spec", "shape", "message"),
    [
        ("transformer:patch=3", [1, 8, 8], "patch=3 must divide the image's 8x8 pixels"),
        ("transformer:dim=10,heads=4", [8], "dim=10 must be a multiple of heads=4"),
        ("cnn1d:kernel=4", [8], "kernel must be an odd integer"),
        ("resnet:depth=0", [1, 4, 4], "depth must be a whole number >= 1, got 0"),
        ("transformer:layers=2", [8], "transformer takes depth, dim, heads, mlp, patch"),
    ],
)
def test_bad_family_parameters_are_config_errors(spec, shape, message):
    with pytest.raises(ConfigError, match=message):
        build_classifier(spec, shape, 3, math.prod(shape))


def test_cnn1d_params_by_hand():
    # Conv1d(1, 4, 3) + BN(4), pool 8 -> 4; Linear(4*4, 5); Linear(5, 2).
    model = build_classifier("cnn1d:channels=4,kernel=3,hidden=5", [8], 2, 8)
    assert count_params(model) == (1 * 4 * 3 + 4) + 2 * 4 + (16 * 5 + 5) + (5 * 2 + 2)


def test_resnet_shortcut_projects_only_where_the_shape_changes():
    model = build_classifier("resnet:depth=2,width=4", [1, 8, 8], 3, 64)
    blocks = [m for m in model.modules() if type(m).__name__ == "_ResidualBlock"]
    assert len(blocks) == 6  # 3 stages x depth 2
    projected = [not isinstance(b.shortcut, torch.nn.Identity) for b in blocks]
    assert projected == [False, False, True, False, True, False]


def test_flops_count_multiply_adds_twice_by_hand():
    # cnn1d: Conv1d(1, 4, k=3) over 8 positions, Linear(16, 5), Linear(5, 2).
    model = build_classifier("cnn1d:channels=4,kernel=3,hidden=5", [8], 2, 8)
    assert flops(model, [8]) == 2 * (1 * 4 * 3 * 8) + 2 * 16 * 5 + 2 * 5 * 2


def test_transformer_flops_include_attention_matmuls_by_hand():
    # 64 feature tokens, dim 16, 2 heads of 8, one block, mlp ratio 2, 10 classes.
    model = build_classifier("transformer:dim=16,heads=2,depth=1,mlp=2", [64], 10, 64)
    tokens, dim, hidden = 64, 16, 32
    expected = (
        2 * tokens * 1 * dim  # feature tokens: Linear(1, 16) per token
        + 2 * tokens * dim * 3 * dim  # qkv
        + 2 * (2 * tokens * tokens * dim)  # Q·Kᵀ and A·V over all heads
        + 2 * tokens * dim * dim  # output projection
        + 2 * (2 * tokens * dim * hidden)  # MLP
        + 2 * dim * 10  # head
    )
    assert profile(model) == {"params": count_params(model), "flops": expected}


def test_flops_leave_the_model_in_training_mode_when_it_was():
    model = build_classifier("resnet:width=2", [1, 4, 4], 2, 16)
    flops(model, [16])
    assert model.training


def test_transformer_exposes_one_attention_map_per_layer():
    model = build_classifier("transformer:dim=8,depth=3,heads=2,patch=4", [1, 8, 8], 3, 64)
    maps = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: maps.append(out))
             for m in attention_modules(model)]
    model(torch.randn(5, 64))
    for h in hooks:
        h.remove()
    assert [tuple(m.shape) for m in maps] == [(5, 2, 4, 4)] * 3
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(5, 2, 4))
    assert attention_modules(build_classifier("mlp", [4], 2, 4)) == []
