"""Causal-LM tokens: packing documents into blocks (segments, next-token labels, prompt
tokens that are never targets), the byte-level BPE trained on a corpus, and the encoder's
fingerprint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kdflow.errors import ConfigError
from kdflow.models.lm_tokenizer import (
    EOS,
    IGNORE,
    PAD,
    LMEncoder,
    default_vocab_size,
    pack,
    train_bpe,
)

WORDS = "the a cat dog sat on mat ran fast slow big small red blue green old new".split()
UNICODE = "Grüße, naïve café — 日本語のテキスト, emoji 🙂🚀, tabs\tand  double  spaces\n"


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        " ".join(rng.choice(WORDS, size=int(rng.integers(3, 15)))) + "." for _ in range(n)
    ]


@pytest.fixture(scope="module")
def tokenizer() -> object:
    return train_bpe(sentences(400) + [UNICODE], 600)


# ------------------------------------------------------------------------------ pack


def test_pack_lays_documents_end_to_end_and_cuts_blocks_of_max_length() -> None:
    # Stream: 5 6 7 EOS | 8 9 EOS 10 | EOS pad pad pad   (EOS = 0, pad = 1)
    packed = pack([[5, 6, 7], [8, 9], [10]], None, 4, eos_id=0, pad_id=1)
    assert packed.dtype == np.int64 and packed.shape == (3, 3, 4)
    np.testing.assert_array_equal(packed[:, 0], [[5, 6, 7, 0], [8, 9, 0, 10], [0, 1, 1, 1]])
    # The third document is cut by the boundary: its EOS is segment 1 of the next block.
    np.testing.assert_array_equal(packed[:, 1], [[1, 1, 1, 1], [1, 1, 1, 2], [1, 0, 0, 0]])
    np.testing.assert_array_equal(
        packed[:, 2],
        [
            [6, 7, 0, IGNORE],  # EOS is the last document token's target; a block's end none
            [9, 0, IGNORE, IGNORE],  # the EOS does not predict the next document's token
            [IGNORE] * 4,  # 10 -> EOS crossed the boundary: lost; padding is never a target
        ],
    )


def test_prompt_tokens_are_read_but_never_targets() -> None:
    # Prompt [5, 6] + completion [7, 8]; then a prompt [9] + completion [10].
    masks = [[False, False, True, True], [False, True]]
    packed = pack([[5, 6, 7, 8], [9, 10]], masks, 8, eos_id=0, pad_id=1)
    np.testing.assert_array_equal(packed[0, 0], [5, 6, 7, 8, 0, 9, 10, 0])
    np.testing.assert_array_equal(packed[0, 1], [1, 1, 1, 1, 1, 2, 2, 2])
    # 5 -> 6 is a prompt token: no target. 6 -> 7 is the first completion token: learnt
    # from the prompt. The EOS after the completion counts too.
    np.testing.assert_array_equal(
        packed[0, 2], [IGNORE, 7, 8, 0, IGNORE, 10, 0, IGNORE]
    )


def test_segments_never_cross_documents_and_labels_follow_the_stream() -> None:
    rng = np.random.default_rng(1)
    documents = [rng.integers(2, 50, int(rng.integers(0, 30))).tolist() for _ in range(200)]
    length = 16
    packed = pack(documents, None, length, eos_id=0, pad_id=1)
    ids, segments, labels = packed[:, 0], packed[:, 1], packed[:, 2]
    total = sum(len(d) + 1 for d in documents)
    assert packed.shape == (-(-total // length), 3, length), "blocks of exactly max_length"
    stream = np.concatenate([np.r_[d, 0] for d in documents]).astype(np.int64)
    np.testing.assert_array_equal(ids.reshape(-1)[:total], stream)
    assert (ids.reshape(-1)[total:] == 1).all() and (segments.reshape(-1)[total:] == 0).all()
    # A segment is one document: it starts at the block's start or just after an EOS.
    starts = np.diff(segments, axis=1, prepend=0) != 0
    before = np.concatenate([np.ones((len(ids), 1), bool), ids[:, :-1] == 0], axis=1)
    assert not (starts & (segments > 0) & ~before).any()
    # Targets: the next token of the same segment; never at an EOS, a block end or padding.
    has_target = labels != IGNORE
    np.testing.assert_array_equal(labels[:, :-1][has_target[:, :-1]],
                                  ids[:, 1:][has_target[:, :-1]])
    assert not has_target[:, -1].any() and not has_target[ids == 0].any()
    assert not has_target[segments == 0].any()
    same = (segments[:, 1:] == segments[:, :-1]) & (segments[:, :-1] > 0)
    np.testing.assert_array_equal(has_target[:, :-1], same)


def test_pack_of_no_documents_is_no_block_and_masks_must_match_the_tokens() -> None:
    assert pack([], None, 8, 0, 1).shape == (0, 3, 8)
    with pytest.raises(ValueError, match="document 1: 1 mask values for 2 tokens"):
        pack([[5], [6, 7]], [[True], [True]], 8, 0, 1)


# ------------------------------------------------------------------------------ BPE


def test_bpe_is_deterministic_for_the_same_texts() -> None:
    texts = sentences(300, seed=3)
    first, second = train_bpe(texts, 400), train_bpe(texts, 400)
    assert first.get_vocab() == second.get_vocab()
    state = [json.loads(t.backend_tokenizer.to_str())["model"]["merges"] for t in (first, second)]
    assert state[0] == state[1] and state[0], "the same merges, in the same order"
    other = train_bpe(sentences(300, seed=4) + ["zebra " * 50], 400)
    assert other.get_vocab() != first.get_vocab()


def test_bpe_round_trips_any_unicode_text(tokenizer: object) -> None:
    for text in [UNICODE, "never seen: Ωμέγα ℵ ∮ ☃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", " leading space", "a .b ,c"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        assert tokenizer.decode(ids) == text  # type: ignore[attr-defined]


def test_bpe_has_end_of_text_and_pad_tokens_and_a_vocabulary_within_its_size(
    tokenizer: object,
) -> None:
    tok = tokenizer
    assert tok.eos_token == tok.bos_token == EOS and tok.pad_token == PAD  # type: ignore[attr-defined]
    assert tok.eos_token_id != tok.pad_token_id  # type: ignore[attr-defined]
    assert 258 < len(tok) <= 600  # type: ignore[arg-type]
    common = tok("the cat sat on the mat.", add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    assert len(common) < len("the cat sat on the mat."), "merges learnt from the corpus"
    with pytest.raises(ConfigError, match="needs at least 258 tokens") as caught:
        train_bpe(["a b c"], 100)
    assert caught.value.option == "--vocab-size"


def test_the_default_vocabulary_is_a_fifth_of_the_distinct_words_within_bounds() -> None:
    assert default_vocab_size(sentences(50)) == 512
    assert default_vocab_size([" ".join(f"w{i}" for i in range(32_000))]) == 6400
    assert default_vocab_size([f"w{i} w{i}x" for i in range(8_000)]) == 3200
    assert default_vocab_size([" ".join(f"w{i}" for i in range(200_000))]) == 16_384
    assert default_vocab_size([" ".join(f"w{i}" for i in range(21_000))]) % 64 == 0


# ------------------------------------------------------------------------------ encoder


def test_the_encoder_packs_texts_with_eos_between_documents(tokenizer: object) -> None:
    texts = sentences(20, seed=5)
    encoder = LMEncoder(tokenizer, 32)
    packed = encoder.encode([texts])
    assert packed.shape[1:] == (3, 32) and packed.dtype == np.int64
    tokens = encoder.tokenize(texts)
    np.testing.assert_array_equal(
        packed, pack(tokens, None, 32, encoder.eos_id, encoder.pad_id)
    )
    real = packed[:, 0][packed[:, 1] > 0]
    assert tokenizer.decode(real) == EOS.join(texts) + EOS  # type: ignore[attr-defined]
    assert (packed[:, 0][packed[:, 1] == 0] == encoder.pad_id).all()


def test_the_encoder_learns_completions_only(tokenizer: object) -> None:
    prompts, completions = ["the cat sat on", "a dog"], [" the mat.", " ran fast."]
    encoder = LMEncoder(tokenizer, 64)
    packed = encoder.encode([prompts, completions])
    assert packed.shape == (1, 3, 64)
    ids, segments, labels = packed[0]
    p0, c0 = (len(encoder.tokenize([t])[0]) for t in (prompts[0], completions[0]))
    # Document 1's targets: its completion tokens (the first predicted from the prompt's
    # last token) and its EOS; none of its prompt tokens.
    assert (labels[: p0 - 1] == IGNORE).all()
    np.testing.assert_array_equal(labels[p0 - 1 : p0 + c0], ids[p0 : p0 + c0 + 1])
    assert ids[p0 + c0] == encoder.eos_id and labels[p0 + c0] == IGNORE
    assert tokenizer.decode(ids[:p0 + c0]) == prompts[0] + completions[0]  # type: ignore[attr-defined]
    assert set(segments[segments > 0]) == {1, 2}
    targets = int((labels != IGNORE).sum())
    c1 = len(encoder.tokenize([completions[1]])[0])
    assert targets == c0 + 1 + c1 + 1


def test_the_fingerprint_changes_with_max_length_and_tokenizer_only(tokenizer: object) -> None:
    texts = sentences(400) + [UNICODE]
    base = LMEncoder(tokenizer, 32).fingerprint
    assert LMEncoder(tokenizer, 32).fingerprint == base
    assert LMEncoder(train_bpe(texts, 600), 32).fingerprint == base, "same training, same id"
    assert LMEncoder(tokenizer, 64).fingerprint != base
    assert LMEncoder(train_bpe(texts, 300), 32).fingerprint != base, "other merges"


def test_the_encoder_refuses_a_block_too_short_or_a_tokenizer_without_eos(
    tokenizer: object,
) -> None:
    with pytest.raises(ConfigError, match="at least 2 tokens") as caught:
        LMEncoder(tokenizer, 1)
    assert caught.value.option == "--max-length"

    class NoEos:
        eos_token_id = None
        pad_token_id = None

    with pytest.raises(ConfigError, match="no end-of-text"):
        LMEncoder(NoEos(), 16)
