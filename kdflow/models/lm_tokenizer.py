"""Tokens for causal LMs: a byte-level BPE trained on the corpus, and documents packed
into fixed-length blocks (`LMEncoder`, the `Encoder` a causal LM reads a corpus through).

Packing. Every document's tokens, then the end-of-text token, are laid end to end and cut
into blocks of `max_length` tokens; the last block is padded. A block holds several
documents, so each token carries the segment (1, 2, ... per document piece in its block;
0 for padding) that the model's attention stays inside, and its next-token label is -100
(no target) wherever the next position is another segment, padding, or a token that does
not count. Packing wastes no compute on padding (at most one padded block per split),
where one document per row pads every short document to `max_length`.

A document cut by a block boundary continues as segment 1 of the next block: the one
prediction across the boundary (the next block's first token from this block's last) is
lost, as is that token's context before the boundary.

Prompt/completion data is packed the same way with the prompt's tokens joined directly to
the completion's (no separator is added: a user who wants one, `"\\n"` or `"Answer:"`,
puts it at the end of the prompt or the start of the completion); only completion tokens,
and the end-of-text token after them, are targets. The prompt is read, never learnt.

The end-of-text token `<|endoftext|>` separates documents; a document that contains that
literal text is split there by the tokenizer, as in GPT-2.

tokenizers and transformers are imported inside the functions: a tabular run never pays
for them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kdflow.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
"""End of a document (and its start, as the BOS token), as in GPT-2."""
PAD = "<|pad|>"
IGNORE = -100
"""The label of a position with no target (PyTorch's cross-entropy `ignore_index`)."""
MIN_VOCAB, MAX_VOCAB, VOCAB_STEP = 512, 16_384, 64
BYTE_ALPHABET = 256
"""A byte-level BPE starts from every byte, so any text encodes without an unknown token."""
ENCODE_DOCUMENTS = 8192
"""Documents per tokenizer call: bounds the Python lists alive at once."""
PACK_FORMAT = "kdflow-pack-1"
"""Named in the fingerprint: a change to how `pack` lays out blocks must change it."""


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2's scheme) of at most `vocab_size` tokens trained on `texts`.

    Byte-level: every text round-trips (decode(encode(text)) == text, any Unicode) and no
    token is unknown, which a corpus of code or many scripts needs. No normaliser and no
    prefix space, so the text the model sees is the text as written. `<|endoftext|>` is
    the EOS (and BOS) token, `<|pad|>` the padding. The same texts in the same order give
    the same vocabulary (the trainer breaks ties between equally frequent pairs by the
    pair itself, not by thread timing).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [EOS, PAD]
    if vocab_size < BYTE_ALPHABET + len(specials):
        raise ConfigError(
            f"--vocab-size {vocab_size}: a byte-level BPE needs at least "
            f"{BYTE_ALPHABET + len(specials)} tokens (256 bytes and 2 special tokens); "
            f"0 sizes it to the corpus",
            option="--vocab-size",
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        # Off: "a ." -> "a." would break the round trip.
        clean_up_tokenization_spaces=False,
    )


def default_vocab_size(texts: Iterable[str]) -> int:
    """A vocabulary sized to the corpus: about a fifth of its distinct whitespace words,
    in [512, 16384], a multiple of 64 (embedding matrices tile better on accelerators).

    A fifth: BPE merges cover the frequent words whole and build the rare ones from
    pieces; a vocabulary near the distinct-word count would spend most rows on words seen
    once, whose embeddings barely train on a small corpus.
    """
    distinct: set[str] = set()
    for text in texts:
        distinct.update(text.split())
    size = round(len(distinct) / 5 / VOCAB_STEP) * VOCAB_STEP
    return int(min(MAX_VOCAB, max(MIN_VOCAB, size)))


def tokenizer_state(tokenizer: Any) -> str:
    """What a tokenizer's output depends on, as text (for fingerprints): its whole
    serialised state without the call-time truncation and padding settings."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return json.dumps(sorted(tokenizer.get_vocab().items()))
    state = json.loads(backend.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return json.dumps(state, sort_keys=True)


class LMEncoder:
    """A tokenizer that packs documents into blocks: int64 N × 3 × `max_length` arrays of
    token ids, segment ids and next-token labels (the module docstring says how)."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        if max_length < 2:
            raise ConfigError(
                f"--max-length {max_length}: a packed block needs at least 2 tokens "
                "(a token and the next one it predicts)",
                option="--max-length",
            )
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ConfigError(
                "the tokenizer has no end-of-text (eos) token, which separates a corpus's "
                "documents; give a causal LM whose tokenizer has one"
            )
        self.tokenizer, self.max_length = tokenizer, max_length
        self.eos_id = int(eos)
        pad = tokenizer.pad_token_id
        # GPT-2's tokenizer has no pad token: padding is never a target, so EOS does.
        self.pad_id = self.eos_id if pad is None else int(pad)
        described = tokenizer_state(tokenizer)
        digest = hashlib.sha256(
            f"{PACK_FORMAT}|{described}|{max_length}|{self.eos_id}|{self.pad_id}".encode()
        )
        self.fingerprint = digest.hexdigest()

    def encode(self, columns: Sequence[Sequence[str]]) -> np.ndarray:
        """Documents given column-wise, `[texts]` or `[prompts, completions]`, packed into
        int64 N × 3 × L blocks (ids, segments, labels)."""
        if len(columns) == 1:
            return pack(self.tokenize(columns[0]), None, self.max_length, self.eos_id,
                        self.pad_id)
        if len(columns) != 2:
            raise ConfigError(
                f"a corpus has one text column or a prompt and a completion column, not "
                f"{len(columns)} columns"
            )
        prompts, completions = self.tokenize(columns[0]), self.tokenize(columns[1])
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        tokens = [p + c for p, c in zip(prompts, completions, strict=True)]
        masks = [
            np.concatenate([np.zeros(len(p), bool), np.ones(len(c), bool)])
            for p, c in zip(prompts, completions, strict=True)
        ]
        return pack(tokens, masks, self.max_length, self.eos_id, self.pad_id)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids, without special tokens (packing adds the EOS)."""
        out: list[list[int]] = []
        for start in range(0, len(texts), ENCODE_DOCUMENTS):
            chunk = [str(t) for t in texts[start : start + ENCODE_DOCUMENTS]]
            encoded = self.tokenizer(
                chunk,
                add_special_tokens=False,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,  # no warning for documents past the model's length: packed
            )
            out.extend(list(ids) for ids in encoded["input_ids"])
        return out


def pack(
    token_lists: Sequence[Sequence[int] | np.ndarray],
    count_masks: Sequence[Sequence[bool] | np.ndarray] | None,
    max_length: int,
    eos_id: int,
    pad_id: int,
) -> np.ndarray:
    """Documents' tokens packed end to end into blocks: int64 N × 3 × `max_length`.

    Each document is followed by `eos_id`; the stream is cut every `max_length` tokens
    and the last block padded with `pad_id`. Channel 0 holds the token ids; channel 1 the
    segment of each token within its block (1, 2, ... per document piece, 0 for padding);
    channel 2 the next-token labels: `ids[t + 1]` where position t + 1 is in the same
    block and segment and counts as a target, else -100. `count_masks` (one per document,
    as long as its tokens) says which tokens count; None: all do. The EOS after a
    document always counts.

    Vectorised over tokens (per document only its length is read), so 10 M tokens pack
    in one or two seconds on one core; tokenizing them takes far longer.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    documents = len(token_lists)
    sizes = np.fromiter((len(t) for t in token_lists), np.int64, count=documents)
    if count_masks is not None:
        if len(count_masks) != documents:
            raise ValueError(f"{len(count_masks)} count masks for {documents} documents")
        mask_sizes = np.fromiter((len(m) for m in count_masks), np.int64, count=documents)
        if not np.array_equal(mask_sizes, sizes):
            bad = int(np.flatnonzero(mask_sizes != sizes)[0])
            raise ValueError(f"document {bad}: {mask_sizes[bad]} mask values for "
                             f"{sizes[bad]} tokens")
    lengths = sizes + 1  # + EOS
    total = int(lengths.sum())
    blocks = -(-total // max_length)
    ids = np.full(blocks * max_length, pad_id, np.int64)
    counts = np.zeros(blocks * max_length, bool)
    document = np.full(blocks * max_length, -1, np.int64)
    ends = np.cumsum(lengths) - 1
    body = np.ones(total, bool)
    body[ends] = False
    tokens = total - documents
    ids[:total][body] = np.fromiter(itertools.chain.from_iterable(token_lists), np.int64, tokens)
    ids[ends] = eos_id
    if count_masks is None:
        counts[:total] = True
    else:
        counts[:total][body] = np.fromiter(
            itertools.chain.from_iterable(count_masks), bool, tokens
        )
        counts[ends] = True
    document[:total] = np.repeat(np.arange(documents, dtype=np.int64), lengths)
    shape = (blocks, max_length)
    ids, counts, document = ids.reshape(shape), counts.reshape(shape), document.reshape(shape)
    # Documents are contiguous, so a block's segments count up from its first document.
    segments = np.where(document >= 0, document - document[:, :1] + 1, 0)
    labels = np.full(shape, IGNORE, np.int64)
    target = (segments[:, 1:] == segments[:, :-1]) & (segments[:, :-1] > 0) & counts[:, 1:]
    labels[:, :-1] = np.where(target, ids[:, 1:], IGNORE)
    return np.stack([ids, segments, labels], axis=1)
