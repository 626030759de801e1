"""Small corpora and tiny causal LMs for the tests of the causal-lm task: documents from a
little grammar (so that a model learns something in seconds), prepared corpus folders, and
GPT-2 / Llama specs small enough to train on a CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kdflow.data.prepared import frame_sha256, write_prepared_corpus

SUBJECTS = "the cat|the dog|a bird|my friend|the old man|a child".split("|")
VERBS = "sat on|ran to|looked at|walked past|jumped over".split("|")
OBJECTS = "the mat|the door|a tree|the river|the house|a box".split("|")
ENDINGS = ("and slept .", "and went home .", "in the rain .", "at night .", ".")


def sentence(rng: np.random.Generator) -> str:
    return " ".join(
        [str(rng.choice(SUBJECTS)), str(rng.choice(VERBS)), str(rng.choice(OBJECTS)),
         str(rng.choice(ENDINGS))]
    )


def corpus_frame(documents: int = 120, seed: int = 0, sentences: tuple[int, int] = (1, 5)
                 ) -> pd.DataFrame:
    """Documents of a few sentences each, in a `text` column."""
    rng = np.random.default_rng(seed)
    texts = [
        " ".join(sentence(rng) for _ in range(int(rng.integers(*sentences))))
        for _ in range(documents)
    ]
    return pd.DataFrame({"text": texts})


def instruction_frame(documents: int = 80, seed: int = 0) -> pd.DataFrame:
    """Prompt/completion pairs: the completion continues the prompt's sentence."""
    rng = np.random.default_rng(seed)
    prompts, completions = [], []
    for _ in range(documents):
        subject, verb = str(rng.choice(SUBJECTS)), str(rng.choice(VERBS))
        prompts.append(f"Q: what did {subject} do? A:")
        completions.append(f" {subject} {verb} {rng.choice(OBJECTS)} .")
    return pd.DataFrame({"prompt": prompts, "completion": completions})


def corpus_dataset(folder: Path, documents: int = 120, max_length: int = 32,
                   frame: pd.DataFrame | None = None) -> Path:
    """A prepared corpus (train/val/test 70/15/15 % of the documents)."""
    frame = corpus_frame(documents) if frame is None else frame
    n = len(frame)
    cut = [int(n * 0.7), int(n * 0.85)]
    splits = {"train": frame.iloc[: cut[0]], "val": frame.iloc[cut[0] : cut[1]],
              "test": frame.iloc[cut[1] :]}
    columns = [c for c in ("text", "prompt", "completion") if c in frame.columns]
    write_prepared_corpus(folder, {k: v.reset_index(drop=True) for k, v in splits.items()},
                          columns, max_length, frame_sha256(frame), "unit")
    return folder


def tiny_gpt2(layers: int = 2, width: int = 32, heads: int = 2, positions: int = 64) -> str:
    """An `hf-config:gpt2:` spec that trains in seconds on a CPU."""
    return f"hf-config:gpt2:n_layer={layers},n_embd={width},n_head={heads},n_positions={positions}"


def tiny_llama(layers: int = 2, width: int = 32, heads: int = 2) -> str:
    return (f"hf-config:llama:num_hidden_layers={layers},hidden_size={width},"
            f"num_attention_heads={heads},num_key_value_heads={heads},"
            f"intermediate_size={2 * width},max_position_embeddings=64")
