"""The `key=value,...` part of `hf-config:` and `hf-from-teacher:` specs: parsed into typed
values (a value with dashes is a list of numbers: `hidden_sizes=32-64`), checked against the
model type's config class (unknown keys and bad values are one-line errors, which
transformers itself would keep silently or raise deep inside), and made into a config."""

from __future__ import annotations

import json
import re
from typing import Any

from kdflow.errors import ConfigError


def parse_overrides(text: str, spec: str, option: str) -> dict[str, Any]:
    """`key=value,...` with values as JSON where they parse (numbers, true/false), lists of
    numbers where dashes join them (`32-64`), else text."""
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, raw = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"{option}: {spec!r}: expected key=value, got {part!r}", option=option
            )
        values[key.strip()] = _value(raw.strip())
    for key, value in values.items():
        sizes = value if isinstance(value, list) else [value]
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in sizes)
        if SIZE_KEYS.match(key) and numbers and not all(v >= 1 for v in sizes):
            shown = "-".join(map(str, sizes))
            raise ConfigError(f"{option}: {spec!r}: {key} must be >= 1, got {shown}",
                              option=option)
    return values


SIZE_KEYS = re.compile(
    r"^(n_(layers?|heads?|embd|inner|positions|ctx)"
    r"|num_(hidden_|decoder_|encoder_|key_value_|attention_)?(layers|heads)|num_channels"
    r"|(hidden|intermediate|embedding|patch|image)_sizes?|hidden_dim|dim|d_model|d_ff|d_kv"
    r"|ffn_dim|head_dim|depths|max_position_embeddings|vocab_size)$"
)
"""Config keys that are sizes (layers, heads, widths, positions, vocabulary): a zero or
negative one builds an empty model or fails deep inside transformers. Others may be 0
(`pad_token_id`, `chunk_size_feed_forward`, DeBERTa's `type_vocab_size`)."""


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    parts = raw.split("-")
    if len(parts) > 1:
        try:
            numbers = [json.loads(p) for p in parts]
        except json.JSONDecodeError:
            return raw
        if all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers):
            return numbers
    return raw


TEXT_EXAMPLES = ("bert", "distilbert", "roberta", "electra", "albert")


IMAGE_EXAMPLES = ("vit", "resnet", "convnext", "mobilenet_v2")


def checked_overrides(
    model_type: str, overrides: dict[str, Any], spec: str, option: str
) -> dict[str, Any]:
    """`overrides` for a config of `model_type`, a number given for a list (`depths=2`)
    made a list; unknown types and keys are errors (transformers itself would keep an
    unknown key silently)."""
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        text = ", ".join(t for t in TEXT_EXAMPLES if t in CONFIG_MAPPING)
        images = ", ".join(t for t in IMAGE_EXAMPLES if t in CONFIG_MAPPING)
        raise ConfigError(
            f"{option}: {spec!r}: unknown model type {model_type!r} (e.g. {text} for text; "
            f"{images} for images)",
            option=option,
        )
    default = CONFIG_MAPPING[model_type]()
    unknown = sorted(k for k in overrides if not hasattr(default, k))
    if unknown:
        raise ConfigError(
            f"{option}: {spec!r}: {model_type} configs have no {', '.join(unknown)}", option=option
        )
    def listed(key: str, value: Any) -> Any:
        wants_list = isinstance(getattr(default, key), list | tuple)
        return [value] if wants_list and isinstance(value, int | float) else value

    return {k: listed(k, v) for k, v in overrides.items()}


def make_config(model_type: str, values: dict[str, Any], spec: str, option: str) -> Any:
    """A config of `model_type` built from `values` (not set one by one afterwards: a
    ResNet's or ConvNeXt's stage names follow its depths only when built with them)."""
    from transformers import CONFIG_MAPPING

    try:
        return CONFIG_MAPPING[model_type](**values)
    except Exception as exc:  # transformers' strict configs raise several kinds
        # Their messages span lines ("Validation error for field 'depths':", then why).
        why = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise ConfigError(f"{option}: {spec!r}: {why[:300] or type(exc).__name__}",
                          option=option) from exc


def config_for(model_type: str, overrides: dict[str, Any], spec: str, option: str) -> Any:
    """A transformers config of `model_type` with `overrides` (see `checked_overrides`)."""
    return make_config(model_type, checked_overrides(model_type, overrides, spec, option),
                       spec, option)


def _split_type(spec: str, option: str) -> tuple[str, str]:
    model_type, _, rest = spec.removeprefix("hf-config:").partition(":")
    if not model_type:
        raise ConfigError(
            f"{option}: {spec!r} names no model type; write hf-config:bert:hidden_size=128,... "
            "or hf-config:resnet:hidden_sizes=32-64,depths=1-1",
            option=option,
        )
    return model_type, rest
