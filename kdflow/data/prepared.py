"""Datasets: built-in sets, splits, hashing, and the prepared-dataset folder.

A prepared dataset (the validate step's output) is a folder with `train.parquet`,
`val.parquet`, `test.parquet` and `meta.json` (feature columns, class names, input shape,
source hash). Labels are stored as class indices into `meta.json`'s `classes`; a causal-lm
corpus has documents and no labels (`write_prepared_corpus`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kdflow.config import BUILTIN_PREFIX
from kdflow.data.labels import class_keys
from kdflow.data.tables import read_table
from kdflow.errors import ConfigError, DataError

BUILTIN_SHAPES = {"digits": [1, 8, 8]}
CHUNK_ROWS = 65_536
"""Rows per row group of a prepared split: what a streamed run reads and shuffles as one
chunk (`kdflow.distill.stream`); 64 float32 features: 16 MB."""


def builtin_frame(name: str, label_column: str = "label") -> pd.DataFrame:
    """scikit-learn's bundled datasets as DataFrames; no download."""
    if name != "digits":
        raise ConfigError(
            f"--data: unknown built-in dataset {name!r}; known: "
            + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_SHAPES),
            option="--data",
        )
    from sklearn.datasets import load_digits

    bunch = load_digits()
    frame = pd.DataFrame(
        bunch.data.astype(np.float32), columns=[f"px{i}" for i in range(bunch.data.shape[1])]
    )
    frame[label_column] = bunch.target.astype(np.int64)
    return frame


def load_frame(uri: str, label_column: str = "label") -> pd.DataFrame:
    if uri.startswith(BUILTIN_PREFIX):
        return builtin_frame(uri.removeprefix(BUILTIN_PREFIX), label_column)
    return read_table(uri)


def default_input_shape(uri: str) -> list[int] | None:
    if uri.startswith(BUILTIN_PREFIX):
        return BUILTIN_SHAPES.get(uri.removeprefix(BUILTIN_PREFIX))
    return None


def frame_sha256(frame: pd.DataFrame) -> str:
    """Content hash of a table: the same rows and columns give the same hash."""
    digest = hashlib.sha256()
    digest.update(json.dumps([str(c) for c in frame.columns]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


@dataclass
class DatasetMeta:
    label_column: str
    feature_columns: list[str]
    classes: list[str]
    input_shape: list[int]
    sha256: str
    rows: dict[str, int]
    source: str
    kind: str = "columns"
    """`columns` (numeric feature columns), `text` (the text columns, tokenized by each
    model), `image` (image files, decoded once into uint8 C × H × W pixels) or `corpus`
    (causal-lm documents, packed into blocks of tokens by each model; no label column and
    no classes, and `rows` counts documents, not blocks); `kdflow.data.sources.KINDS`
    reads each."""
    text_columns: list[str] = field(default_factory=list)
    """The text column, and the second text of a pair when there is one (kind `text`);
    a corpus's text column, or its prompt and completion columns (kind `corpus`)."""
    max_length: int = 0
    """Tokens per text (kind `text`): longer texts are truncated. Tokens per packed block
    (kind `corpus`, whose `input_shape` is [max_length])."""

    @property
    def n_features(self) -> int:
        """Values per sample a model reads: the feature columns, or an image's pixels."""
        if self.kind == "image":
            return math.prod(self.input_shape)
        return len(self.feature_columns)

    @property
    def n_classes(self) -> int:
        return len(self.classes)


@dataclass
class Split:
    x: np.ndarray  # float32, N × F
    y: np.ndarray  # int64 class indices, N


def split_frame(
    frame: pd.DataFrame,
    label_column: str,
    test_fraction: float,
    seed: int,
    source: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A stratified, seeded split (unstratified when there are too many classes for the
    rows). Every class of the second part is in the first. A class with a single row
    cannot be in both: with `source` (the file split into train and test, which the error
    names) that is a DataError naming the class; without it (the validation rows taken
    from the training rows) the row stays in the first part, as does any class the split
    would leave out of it."""
    from sklearn.model_selection import train_test_split

    from kdflow.data.labels import single_row_classes, single_row_message

    labels = frame[label_column]
    counts = labels.value_counts()
    singles = counts.index[counts < 2]
    if len(singles) and source is not None:
        classes = single_row_classes(counts.to_dict())
        raise DataError("--label-column: " + single_row_message(classes, label_column, source))
    alone = labels.isin(singles)
    rest = frame[~alone] if alone.any() else frame
    # Stratifying needs every class in both parts (scikit-learn rounds the test part up).
    kept = len(counts) - len(singles)
    second_rows = math.ceil(test_fraction * len(rest))
    fits = kept <= min(second_rows, len(rest) - second_rows)
    stratify = rest[label_column] if fits else None
    try:
        first, second = train_test_split(
            rest, test_size=test_fraction, random_state=seed, stratify=stratify
        )
    except ValueError as exc:
        raise DataError(
            f"cannot split {len(frame)} rows with test fraction {test_fraction}: {exc}"
        ) from exc
    unseen = ~second[label_column].isin(first[label_column])
    if alone.any() or unseen.any():
        first = pd.concat([first, frame[alone], second[unseen]])
        second = second[~unseen]
    return first.reset_index(drop=True), second.reset_index(drop=True)


def resolve_input_shape(input_shape: list[int] | None, n_features: int) -> list[int]:
    if input_shape is None:
        return [n_features]
    if math.prod(input_shape) != n_features:
        raise ConfigError(
            f"--input-shape {','.join(map(str, input_shape))} holds {math.prod(input_shape)} "
            f"values but the data has {n_features} feature columns",
            option="--input-shape",
        )
    return list(input_shape)


def class_names(train_labels: pd.Series) -> list[str]:
    """Sorted class names: numerically when every label is an integer."""
    values = train_labels.dropna().unique().tolist()
    try:
        return [str(v) for v in sorted(values, key=lambda v: float(v))]
    except (TypeError, ValueError):
        return sorted(str(v) for v in values)


def write_prepared(
    folder: Path,
    splits: dict[str, pd.DataFrame],
    label_column: str,
    input_shape: list[int] | None,
    sha256: str,
    source: str,
    text_columns: list[str] | None = None,
    max_length: int = 0,
    feature_columns: list[str] | None = None,
) -> DatasetMeta:
    """Normalise dtypes (float32 features, or strings for text columns; class-index labels)
    and write the folder. With `text_columns` only those columns are kept, as text (a
    missing value becomes the empty string), and `max_length` is recorded for the
    models' tokenizers. `feature_columns` (a contract's features) are the numeric columns
    the models read, in that order; None: every column but the label. Labels of the splits
    are matched as classes by `kdflow.data.labels.class_keys` (1, 1.0 and "1" are one)."""
    folder.mkdir(parents=True, exist_ok=True)
    if text_columns:
        features = list(text_columns)
    elif feature_columns:
        features = list(feature_columns)
    else:
        features = [c for c in splits["train"].columns if c != label_column]
    key = class_keys(
        {name: frame[label_column].dropna().unique() for name, frame in splits.items()},
        label_column,
    )
    classes = class_names(splits["train"][label_column].map(key))
    index = {name: i for i, name in enumerate(classes)}
    for name, frame in splits.items():
        if text_columns:
            out = pd.DataFrame({c: frame[c].fillna("").astype(str) for c in features})
        else:
            out = frame[features].astype(np.float32)
        if frame[label_column].isna().any():
            raise DataError(f"the {name} split has rows without a label ({label_column!r})")
        named = frame[label_column].map(lambda v: str(key(v)))
        unseen = sorted(set(named) - set(index))
        if unseen:
            raise DataError(
                f"the {name} split has class(es) the training split lacks: "
                f"{', '.join(map(repr, unseen[:10]))} (label column {label_column!r})"
            )
        out["label"] = named.map(index).astype(np.int64)
        # Row groups of CHUNK_ROWS: the unit a streamed run reads and shuffles by.
        out.to_parquet(folder / f"{name}.parquet", index=False, row_group_size=CHUNK_ROWS)
    meta = DatasetMeta(
        label_column=label_column,
        feature_columns=[] if text_columns else features,
        classes=classes,
        input_shape=(
            [max_length] if text_columns else resolve_input_shape(input_shape, len(features))
        ),
        sha256=sha256,
        rows={name: len(frame) for name, frame in splits.items()},
        source=source,
        kind="text" if text_columns else "columns",
        text_columns=list(text_columns or []),
        max_length=max_length if text_columns else 0,
    )
    (folder / "meta.json").write_text(json.dumps(asdict(meta), indent=2))
    return meta


def write_prepared_corpus(
    folder: Path,
    splits: dict[str, pd.DataFrame],
    columns: list[str],
    max_length: int,
    sha256: str,
    source: str,
) -> DatasetMeta:
    """Write a causal-lm corpus's folder: each split's document `columns` ([text] or
    [prompt, completion]) as strings (a missing value becomes the empty string), and
    meta.json of kind `corpus`. Documents stay raw: each model packs them with its own
    tokenizer at `max_length` tokens a block (`kdflow.data.corpus`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        out = pd.DataFrame({c: frame[c].fillna("").astype(str) for c in columns})
        out.to_parquet(folder / f"{name}.parquet", index=False)
    meta = DatasetMeta(
        label_column="",
        feature_columns=[],
        classes=[],
        input_shape=[max_length],
        sha256=sha256,
        rows={name: len(frame) for name, frame in splits.items()},
        source=source,
        kind="corpus",
        text_columns=list(columns),
        max_length=max_length,
    )
    (folder / "meta.json").write_text(json.dumps(asdict(meta), indent=2))
    return meta


def read_meta(folder: str | Path) -> DatasetMeta:
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise DataError(f"{folder}: not a prepared kdflow dataset (no meta.json)")
    return DatasetMeta(**json.loads(path.read_text()))


def read_split(folder: str | Path, name: str) -> Split:
    frame = pd.read_parquet(Path(folder) / f"{name}.parquet")
    # copy=True: under pandas' copy-on-write a plain to_numpy() can be a read-only view, which
    # torch.from_numpy warns about; the frame is dropped right after, so memory stays one copy.
    y = frame.pop("label").to_numpy(np.int64, copy=True)
    return Split(x=frame.to_numpy(np.float32, copy=True), y=y)
