"""Model sizes of zero or less in a spec are one error naming the option and the field;
values that may be 0 are left alone."""

from __future__ import annotations

import pytest

from kdflow.errors import ConfigError
from kdflow.models.hf_config import parse_overrides
from kdflow.models.zoo import parse_spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mlp:hidden=0", "hidden must be whole numbers >= 1, one per layer, got 0"),
        ("mlp:hidden=64--8", "hidden must be whole numbers >= 1, one per layer, got 64--8"),
        ("mlp:hidden=1.5", "hidden must be whole numbers >= 1, one per layer, got 1.5"),
        ("cnn:channels=0-8", "channels must be whole numbers >= 1, one per layer, got 0-8"),
        ("cnn:hidden=-1", "hidden must be a whole number >= 1, got -1"),
        ("cnn1d:kernel=0", "kernel must be a whole number >= 1, got 0"),
        ("transformer:dim=-4,heads=2", "dim must be a whole number >= 1, got -4"),
        ("transformer:heads=0", "heads must be a whole number >= 1, got 0"),
        ("resnet:width=0", "width must be a whole number >= 1, got 0"),
        ("mlp:dropout=1", "dropout must be a number in [0, 1), got 1"),
        ("mlp:dropout=-0.1", "dropout must be a number in [0, 1), got -0.1"),
    ],
)
def test_zoo_sizes_below_one_name_the_option_and_field(spec, message) -> None:
    with pytest.raises(ConfigError) as err:
        parse_spec(spec, "--teachers")
    assert str(err.value) == f"--teachers: {spec}: {message}"
    assert err.value.option == "--teachers"


def test_a_dict_spec_is_checked_and_good_sizes_pass() -> None:
    with pytest.raises(ConfigError, match="hidden must be whole numbers >= 1"):
        parse_spec({"arch": "mlp", "hidden": [64, 0]})
    for spec in ("mlp:hidden=64-32,dropout=0", "cnn:channels=8,hidden=16",
                 "transformer:dim=8,heads=2,depth=1", "mlp:hidden=64.0"):
        parse_spec(spec)


@pytest.mark.parametrize(
    ("text", "key", "got"),
    [("n_layer=0", "n_layer", "0"), ("num_hidden_layers=-1", "num_hidden_layers", "-1"),
     ("hidden_size=0", "hidden_size", "0"), ("dim=-4", "dim", "-4"),
     ("hidden_sizes=32-0", "hidden_sizes", "32-0"), ("n_head=0", "n_head", "0")],
)
def test_transformers_sizes_below_one_name_the_option_and_key(text, key, got) -> None:
    spec = f"hf-config:gpt2:{text}"
    with pytest.raises(ConfigError) as err:
        parse_overrides(text, spec, "--student")
    assert str(err.value) == f"--student: {spec!r}: {key} must be >= 1, got {got}"
    assert err.value.option == "--student"


def test_transformers_keys_that_may_be_zero_pass_but_sizes_do_not() -> None:
    values = parse_overrides("pad_token_id=0,type_vocab_size=0,chunk_size_feed_forward=0,"
                             "hidden_dropout_prob=0", "hf-config:bert:...", "--student")
    assert values["pad_token_id"] == 0 and values["type_vocab_size"] == 0
    with pytest.raises(ConfigError, match="intermediate_size must be >= 1, got 0"):
        parse_overrides("pad_token_id=0,intermediate_size=0", "hf-config:bert:...", "--student")
