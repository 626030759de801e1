"""Small prepared datasets and models shared by the tests of `kdflow.distill` and
`kdflow.data.sources`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kdflow.data.prepared import frame_sha256, split_frame, write_prepared

CPU_ROWS = 200


def prepared(folder: Path, seed: int = 0, rows: int = CPU_ROWS) -> Path:
    """4 random features, 3 classes, split 80/20 then 80/20 by `seed` (the rows stay the
    same whatever the seed: only the split changes)."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(rows, 4)).astype(np.float32), columns=list("abcd"))
    frame["label"] = rng.integers(0, 3, rows)
    train, test = split_frame(frame, "label", 0.2, seed)
    train, val = split_frame(train, "label", 0.2, seed)
    write_prepared(
        folder, {"train": train, "val": val, "test": test}, "label", None,
        frame_sha256(frame), "unit",
    )
    return folder


def blob_frame(rows: int, seed: int, flip: bool = False) -> pd.DataFrame:
    """Two separable classes in 4 features; `flip` swaps the labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    x = rng.normal(0, 0.5, (rows, 4)).astype(np.float32)
    x[:, 0] += np.where(y == 1, 2.0, -2.0)
    frame = pd.DataFrame(x, columns=list("abcd"))
    frame["label"] = 1 - y if flip else y
    return frame


def blobs(folder: Path, rows: int = 64, flip_val: bool = False) -> Path:
    """A prepared dataset of `blob_frame`s: train, val (its labels flipped with
    `flip_val`: the more a model learns, the worse it does there) and test."""
    splits = {
        "train": blob_frame(rows, 0),
        "val": blob_frame(rows, 1, flip=flip_val),
        "test": blob_frame(rows, 2),
    }
    write_prepared(folder, splits, "label", None, frame_sha256(splits["train"]), "unit")
    return folder
