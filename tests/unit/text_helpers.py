"""Small text datasets and tiny transformers for the tests of the Hugging Face model sources,
the text data source and text distillation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kdflow.data.prepared import frame_sha256, split_frame, write_prepared

FILLER = "the a cat dog sat on mat ran by old new".split()
CUES = ("good great fine nice happy".split(), "bad awful poor sad angry".split())
CLASSES = ("pos", "neg")
TEST_ONLY = "zyzzyva"
"""A word that only the test split holds: a tokenizer trained on the training split lacks it."""


def tiny_bert(layers: int = 2, **extra: object) -> str:
    """An `hf-config:` spec of a BERT small enough to train in seconds on a CPU."""
    values = {
        "hidden_size": 32,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        **extra,
    }
    return "hf-config:bert:" + ",".join(f"{k}={v}" for k, v in values.items())


def text_frame(rows: int, seed: int, pair: bool = False) -> pd.DataFrame:
    """Short texts whose class shows in their cue words (and, with `pair`, a second text
    that repeats a cue), labelled by name."""
    rng = np.random.default_rng(seed)
    texts, seconds, labels = [], [], []
    for i in range(rows):
        y = i % 2
        words = list(rng.choice(FILLER, size=int(rng.integers(2, 9))))
        words += list(rng.choice(CUES[y], size=2))
        rng.shuffle(words)
        texts.append(" ".join(words))
        seconds.append(" ".join(rng.choice(FILLER, size=2)) + " " + str(rng.choice(CUES[y])))
        labels.append(CLASSES[y])
    frame = pd.DataFrame({"text": texts, "label": labels})
    if pair:
        frame.insert(1, "text2", seconds)
    return frame


def text_dataset(
    folder: Path, rows: int = 200, pair: bool = False, max_length: int = 16
) -> Path:
    """A prepared text dataset (train/val/test 64/16/20 %); the test split alone holds
    `TEST_ONLY`."""
    frame = text_frame(rows, 0, pair)
    train, test = split_frame(frame, "label", 0.2, 0)
    train, val = split_frame(train, "label", 0.2, 0)
    test["text"] = test["text"] + f" {TEST_ONLY}"
    write_prepared(
        folder,
        {"train": train, "val": val, "test": test},
        "label",
        None,
        frame_sha256(frame),
        "unit",
        text_columns=["text", "text2"] if pair else ["text"],
        max_length=max_length,
    )
    return folder
