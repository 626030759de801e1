"""`TextSource`: the raw text encoded by each model's own tokenizer, read and streamed by
row ranges, the token cache under the storage root, text pairs, and `HfClassifier`
trimming each batch to its longest text."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.numpy import load_file

from kdflow.data.sources import open_source
from kdflow.data.text import TOKEN_CACHE, TextSource
from kdflow.errors import ConfigError
from kdflow.models import hf
from kdflow.models.hf import HfClassifier, TextEncoder, train_wordpiece
from kdflow.models.sources import encoder_of
from tests.unit.text_helpers import text_dataset, text_frame


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return text_dataset(tmp_path_factory.mktemp("text") / "dataset", max_length=16)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return text_dataset(tmp_path_factory.mktemp("pairs") / "dataset", pair=True, max_length=40)


@pytest.fixture(scope="module")
def tokenizer() -> object:
    frame = text_frame(200, 0, pair=True)
    return train_wordpiece(iter(list(frame["text"]) + list(frame["text2"])), 200)


def test_read_encodes_the_split_with_the_encoder_and_slices_row_ranges(
    dataset: Path, tokenizer: object
) -> None:
    source = open_source(str(dataset))
    assert isinstance(source, TextSource)
    encoder = TextEncoder(tokenizer, source.meta.max_length)
    whole = source.read("train", encoder=encoder)
    rows = source.rows("train")
    assert whole.x.shape == (rows, 3, 16) and whole.x.dtype == np.int64
    np.testing.assert_array_equal(whole.y, source.labels("train"))
    texts = source.texts("train")[0]
    expected = tokenizer(texts, truncation=True, max_length=16, padding="max_length")  # type: ignore[operator]
    np.testing.assert_array_equal(whole.x[:, 0], np.array(expected["input_ids"]))
    np.testing.assert_array_equal(whole.x[:, 1], np.array(expected["attention_mask"]))
    assert (whole.x[:, 2] == 0).all()  # one text: every token is segment A
    assert (whole.x[:, 1].sum(1) < 16).any(), "no padding to trim in the tests below"
    part = source.read("train", 10, 30, encoder=encoder)
    np.testing.assert_array_equal(part.x, whole.x[10:30])
    np.testing.assert_array_equal(part.y, whole.y[10:30])
    tail = source.read("train", rows - 5, rows + 100, encoder=encoder)
    assert len(tail.x) == len(tail.y) == 5
    streamed = list(source.stream("train", batch_rows=50, encoder=encoder))
    assert [len(b) for b in streamed] == [50, 50, rows - 100]
    np.testing.assert_array_equal(np.concatenate(streamed), whole.x)
    assert source.input_stats() == ([], [])


def test_text_needs_an_encoder(dataset: Path) -> None:
    source = open_source(str(dataset))
    with pytest.raises(ConfigError, match="needs a model with a tokenizer") as caught:
        source.read("train")
    assert caught.value.option == "--student"
    with pytest.raises(ConfigError, match="needs a model with a tokenizer"):
        next(iter(source.stream("val")))


def test_the_token_cache_is_written_under_the_root_and_read_back_by_a_later_source(
    dataset: Path, tokenizer: object, tmp_path: Path
) -> None:
    root = tmp_path / "storage"
    encoder = TextEncoder(tokenizer, 16)
    first = open_source(str(dataset), cache_root=str(root))
    train = first.read("train", encoder=encoder)
    first.read("train", encoder=encoder)  # the process's own copy: no second tokenizing
    seconds = first.tokenize_seconds
    assert seconds > 0
    split_key = hashlib.sha256((dataset / "train.parquet").read_bytes()).hexdigest()[:24]
    cached = root / TOKEN_CACHE / split_key / encoder.fingerprint[:24]
    assert sorted(p.name for p in cached.iterdir()) == ["train.safetensors"]
    stored = load_file(str(cached / "train.safetensors"))["inputs"]
    assert stored.dtype == np.int32
    np.testing.assert_array_equal(stored, train.x)

    second = open_source(str(dataset), cache_root=str(root))
    again = second.read("train", encoder=TextEncoder(tokenizer, 16))  # an equal encoder
    assert second.tokenize_seconds == 0.0
    assert again.x.dtype == np.int64
    np.testing.assert_array_equal(again.x, train.x)
    np.testing.assert_array_equal(again.y, train.y)

    # Another maximum length is another encoding: its own cache entry.
    longer = TextEncoder(tokenizer, 20)
    assert longer.fingerprint != encoder.fingerprint
    assert second.read("train", encoder=longer).x.shape[2] == 20
    assert second.tokenize_seconds > 0
    assert (root / TOKEN_CACHE / split_key / longer.fingerprint[:24]).is_dir()


def test_another_split_of_the_same_table_is_tokenized_again(
    tmp_path: Path, tokenizer: object
) -> None:
    """The dataset's hash is the table's; the cache is keyed by each split file, so another
    seed's split (other rows under the same name) never reads this one's tokens."""
    root = tmp_path / "storage"
    encoder = TextEncoder(tokenizer, 16)
    first = text_dataset(tmp_path / "one")
    second = tmp_path / "two"
    shutil.copytree(first, second)
    frame = pd.read_parquet(second / "train.parquet")
    frame.iloc[::-1].reset_index(drop=True).to_parquet(second / "train.parquet", index=False)
    assert json.loads((first / "meta.json").read_text())["sha256"] == json.loads(
        (second / "meta.json").read_text())["sha256"]
    a = open_source(str(first), cache_root=str(root)).read("train", encoder=encoder)
    other = open_source(str(second), cache_root=str(root))
    b = other.read("train", encoder=encoder)
    assert other.tokenize_seconds > 0, "tokenized, not read from the first split's cache"
    np.testing.assert_array_equal(b.x, a.x[::-1])


def test_an_unreadable_token_cache_is_tokenized_again(
    dataset: Path, tokenizer: object, tmp_path: Path
) -> None:
    encoder = TextEncoder(tokenizer, 16)
    expected = open_source(str(dataset), cache_root=str(tmp_path)).read("val", encoder=encoder)
    (path,) = (tmp_path / TOKEN_CACHE).rglob("val.safetensors")
    path.write_bytes(b"not safetensors")
    source = open_source(str(dataset), cache_root=str(tmp_path))
    np.testing.assert_array_equal(source.read("val", encoder=encoder).x, expected.x)
    assert source.tokenize_seconds > 0


def test_without_a_cache_root_nothing_is_written(
    dataset: Path, tokenizer: object, tmp_path: Path
) -> None:
    source = open_source(str(dataset))
    source.read("val", encoder=TextEncoder(tokenizer, 16))
    assert not (dataset / TOKEN_CACHE).exists()
    assert not list(dataset.parent.rglob("*.safetensors"))


def test_a_text_pair_is_encoded_as_two_segments(pairs: Path, tokenizer: object) -> None:
    source = open_source(str(pairs))
    assert source.meta.text_columns == ["text", "text2"]
    encoder = TextEncoder(tokenizer, source.meta.max_length)
    assert encoder.token_types and encoder.channels == 3
    x = source.read("val", encoder=encoder).x
    assert x.shape == (source.rows("val"), 3, 40)
    first, second = source.texts("val")
    expected = tokenizer(first, second, truncation=True, max_length=40,  # type: ignore[operator]
                         padding="max_length", return_token_type_ids=True)
    np.testing.assert_array_equal(x[:, 0], np.array(expected["input_ids"]))
    np.testing.assert_array_equal(x[:, 2], np.array(expected["token_type_ids"]))
    sep = tokenizer.sep_token_id  # type: ignore[attr-defined]
    for row in x:
        length = int(row[1].sum())
        ids, types = row[0, :length], row[2, :length]
        assert (ids == sep).sum() == 2
        boundary = int(np.flatnonzero(ids == sep)[0])
        assert (types[: boundary + 1] == 0).all() and (types[boundary + 1 :] == 1).all()
        assert (row[2, length:] == 0).all()
    # The pair changes the encoding, so the cache key too.
    single = open_source(str(text_dataset(pairs.parent / "single", max_length=40)))
    assert not np.array_equal(single.read("val", encoder=encoder).x[:, 2], x[:, 2])


def trimmed_length(lengths: torch.Tensor, padded: int) -> int:
    """The length `HfClassifier` cuts a batch to: its longest text, rounded up to the
    trimming step where the model has one."""
    step = getattr(hf, "TRIM_STEP", 1)
    return min(padded, -(-int(lengths.max()) // step) * step)


def test_trimming_the_padding_leaves_the_logits_as_they_are(
    pairs: Path, tokenizer: object
) -> None:
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,  # type: ignore[arg-type]
        num_attention_heads=2, intermediate_size=64, num_labels=2,
        pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
    )
    model = HfClassifier(AutoModelForSequenceClassification.from_config(config), tokenizer, 40,
                         "hf-config:bert")
    model.eval()
    source = open_source(str(pairs))
    encoder = encoder_of(model)
    assert encoder is model.encoder
    x = torch.from_numpy(source.read("test", encoder=encoder).x)
    lengths = x[:, 1].sum(1)
    assert trimmed_length(lengths, 40) < 40, "nothing to trim"
    seen: list[int] = []
    model.hf.bert.embeddings.register_forward_hook(lambda _m, _a, out: seen.append(out.shape[1]))
    shortest = int(lengths.argmin())
    with torch.no_grad():
        trimmed = model(x)
        full = model.hf(input_ids=x[:, 0], attention_mask=x[:, 1], token_type_ids=x[:, 2]).logits
        one = model(x[shortest : shortest + 1])
    assert seen == [trimmed_length(lengths, 40), 40, trimmed_length(lengths[shortest], 40)]
    assert seen[2] <= seen[0] < 40
    assert trimmed.shape == (len(x), 2)
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one, full[shortest : shortest + 1], atol=1e-5, rtol=1e-5)


def test_a_chunk_is_read_alone_from_the_token_cache_or_tokenized_alone(
    dataset: Path, tokenizer: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A streamed read task or an evaluation chunk wants rows [start, stop): a source that
    does not hold the split reads those rows' token ids from the cache by byte range, or
    (keeping no cache) tokenizes those rows alone, and gets what the whole split's
    encoding holds there."""
    encoder = TextEncoder(tokenizer, 16)
    whole = open_source(str(dataset)).read("train", encoder=encoder)
    encoded: list[int] = []
    encode = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda texts: encoded.append(len(texts[0]))
                        or encode(texts))
    part = open_source(str(dataset)).read("train", 10, 30, encoder=encoder)
    np.testing.assert_array_equal(part.x, whole.x[10:30])
    np.testing.assert_array_equal(part.y, whole.y[10:30])
    assert encoded == [20], "the chunk's 20 rows alone are tokenized"
    open_source(str(dataset), cache_root=str(tmp_path)).read("train", encoder=encoder)  # cache
    encoded.clear()
    later = open_source(str(dataset), cache_root=str(tmp_path))
    part = later.read("train", 10, 30, encoder=encoder)
    np.testing.assert_array_equal(part.x, whole.x[10:30])
    assert part.x.dtype == np.int64 and part.x.flags.writeable
    assert encoded == [], "read from the token cache, not tokenized"
