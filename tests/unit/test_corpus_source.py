"""`CorpusSource`: a prepared corpus read as the blocks a causal LM's encoder packs it
into (ids and segments as inputs, next-token labels), by row ranges and streamed, and the
packed blocks cached under the storage root like text tokens."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from kdflow.data.corpus import CorpusSource
from kdflow.data.prepared import frame_sha256, write_prepared_corpus
from kdflow.data.sources import open_source
from kdflow.data.text import TOKEN_CACHE
from kdflow.errors import ConfigError
from kdflow.models.hf import TextEncoder
from kdflow.models.lm_tokenizer import IGNORE, LMEncoder, train_bpe

WORDS = "the a cat dog sat on mat ran fast slow big small red blue green old new".split()
LENGTH = 32


def documents(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 40)))) for _ in range(n)]


def corpus(folder: Path, columns: dict[str, list[str]]) -> Path:
    frame = pd.DataFrame(columns)
    thirds = len(frame) // 3
    splits = {"train": frame.iloc[: thirds * 2], "val": frame.iloc[thirds * 2 : thirds * 2 + 5],
              "test": frame.iloc[thirds * 2 + 5 :]}
    write_prepared_corpus(folder, splits, list(columns), LENGTH, frame_sha256(frame), "unit")
    return folder


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus(tmp_path_factory.mktemp("corpus") / "dataset", {"text": documents(90, 0)})


@pytest.fixture(scope="module")
def encoder() -> LMEncoder:
    return LMEncoder(train_bpe(documents(90, 0), 400), LENGTH)


class Counting:
    """An encoder that counts its calls (and otherwise is the one it wraps)."""

    def __init__(self, inner: LMEncoder) -> None:
        self.inner, self.fingerprint, self.calls = inner, inner.fingerprint, 0

    def encode(self, columns: Sequence[Sequence[str]]) -> np.ndarray:
        self.calls += 1
        return self.inner.encode(columns)


def test_a_corpus_reads_as_packed_blocks_of_ids_segments_and_labels(
    texts: Path, encoder: LMEncoder
) -> None:
    source = open_source(str(texts))
    assert isinstance(source, CorpusSource) and source.meta.kind == "corpus"
    assert source.meta.input_shape == [LENGTH] and source.meta.classes == []
    documents_ = source.texts("train")
    assert len(documents_) == 1 and len(documents_[0]) == source.documents("train") == 60
    packed = encoder.encode(documents_)
    rows = source.rows("train", encoder)
    assert rows == len(packed) and rows < 60, "several documents a block"
    whole = source.read("train", encoder=encoder)
    assert whole.x.shape == (rows, 2, LENGTH) and whole.y.shape == (rows, LENGTH)
    assert whole.x.dtype == whole.y.dtype == np.int64
    assert whole.x.flags.c_contiguous and whole.y.flags.c_contiguous
    np.testing.assert_array_equal(whole.x, packed[:, :2])
    np.testing.assert_array_equal(whole.y, packed[:, 2])
    np.testing.assert_array_equal(source.labels("train", encoder=encoder), whole.y)
    assert (whole.y == IGNORE).any() and (whole.y != IGNORE).any()
    part = source.read("train", 2, 5, encoder=encoder)
    np.testing.assert_array_equal(part.x, whole.x[2:5])
    np.testing.assert_array_equal(part.y, whole.y[2:5])
    np.testing.assert_array_equal(source.labels("train", 2, 5, encoder), whole.y[2:5])
    assert len(source.read("train", rows - 1, rows + 10, encoder=encoder).x) == 1
    streamed = list(source.stream("train", batch_rows=4, encoder=encoder))
    assert [len(b) for b in streamed[:-1]] == [4] * (len(streamed) - 1)
    np.testing.assert_array_equal(np.concatenate(streamed), whole.x)
    assert source.input_stats() == ([], [])
    assert source.texts("val", 1, 3) == [source.texts("val")[0][1:3]]


def test_a_corpus_needs_an_encoder_that_packs(texts: Path, encoder: LMEncoder) -> None:
    source = open_source(str(texts))
    message = "read through a model's tokenizer"
    for read in (
        lambda: source.rows("train"),
        lambda: source.read("train"),
        lambda: next(iter(source.stream("val"))),
        lambda: source.labels("test"),
    ):
        with pytest.raises(ConfigError, match=message) as caught:
            read()
        assert caught.value.option == "--student"
    classifier = TextEncoder(encoder.tokenizer, LENGTH)  # one text a row: not a corpus's
    with pytest.raises(ConfigError, match="packs 3 channels per block"):
        source.read("train", encoder=classifier)


def test_the_blocks_are_packed_once_and_a_later_source_reads_the_cache(
    texts: Path, encoder: LMEncoder, tmp_path: Path
) -> None:
    root = tmp_path / "storage"
    counting = Counting(encoder)
    first = open_source(str(texts), cache_root=str(root))
    expected = first.read("train", encoder=counting)
    first.read("train", 0, 3, encoder=counting)
    first.rows("train", counting)
    assert counting.calls == 1, "packed once per process"
    assert first.tokenize_seconds > 0
    split_key = hashlib.sha256((texts / "train.parquet").read_bytes()).hexdigest()[:24]
    path = root / TOKEN_CACHE / split_key / encoder.fingerprint[:24] / "train.safetensors"
    cached = load_file(path)["inputs"]
    assert cached.dtype == np.int32 and cached.shape == (len(expected.x), 3, LENGTH)
    assert (cached[:, 2] == IGNORE).any(), "labels of -100 fit the int32 cache"

    later = Counting(encoder)
    second = open_source(str(texts), cache_root=str(root))
    again = second.read("train", encoder=later)
    assert later.calls == 0 and second.tokenize_seconds == 0.0, "read back, not re-packed"
    np.testing.assert_array_equal(again.x, expected.x)
    np.testing.assert_array_equal(again.y, expected.y)
    other = LMEncoder(encoder.tokenizer, LENGTH * 2)
    assert second.read("train", encoder=other).x.shape[-1] == LENGTH * 2
    assert second.tokenize_seconds > 0, "another max_length is another cache entry"


def test_prompt_completion_blocks_learn_only_the_completions(
    tmp_path: Path, encoder: LMEncoder
) -> None:
    prompts = [f"{text} ?" for text in documents(30, 1)]
    completions = [f" {text}." for text in documents(30, 2)]
    folder = corpus(tmp_path / "pairs", {"prompt": prompts, "completion": completions})
    source = open_source(str(folder))
    assert source.meta.text_columns == ["prompt", "completion"]
    train = source.texts("train")
    assert train == [prompts[:20], completions[:20]]
    read = source.read("train", encoder=encoder)
    np.testing.assert_array_equal(read.y, encoder.encode(train)[:, 2])
    completion_tokens = sum(len(t) for t in encoder.tokenize(train[1]))
    assert int((read.y != IGNORE).sum()) <= completion_tokens + len(train[1])
    plain = encoder.encode([[p + c for p, c in zip(*train, strict=True)]])
    assert int((read.y != IGNORE).sum()) < int((plain[:, 2] != IGNORE).sum())
