"""The validate step for image data: read the image set, validate it, write the prepared
dataset (`kdflow.data.images`).

Reading lists the files (a folder per class, or a table of paths or bytes) and decodes
each one once with Pillow for its facts (`kdflow.data.image_facts`); validation holds the
facts to the contract (`kdflow.validation.image_checks`: GX Core on the per-image facts,
and the exact checks: undecodable files, empty classes, sizes, modes, duplicates,
leakage); preparing keeps the images that decode, splits them (stratified and seeded,
as tabular data), and decodes them at the dataset's size into uint8 pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kdflow.config import DataConfig
from kdflow.data.image_facts import ImageSet, read_image_set, usable_rows
from kdflow.data.images import write_prepared_images
from kdflow.data.prepared import DatasetMeta, class_names, split_frame
from kdflow.validation.contract import DataContract, default_contract
from kdflow.validation.gx_suite import import_gx_in_background
from kdflow.validation.image_checks import validate_images
from kdflow.validation.image_shapes import image_shape
from kdflow.validation.report import ValidationReport

log = logging.getLogger(__name__)


@dataclass
class ImageData:
    """The image sets a run names, and what validation made of them."""

    train: ImageSet
    test: ImageSet | None
    report: ValidationReport


def validate_image_data(cfg: DataConfig, docs_dir: Path | None = None) -> ImageData:
    """Read and validate `--data` (and `--test-data`) as images; the report holds every
    finding (DataError only for input that is not an image set at all)."""
    import_gx_in_background()  # GX loads (~5 s) while the images decode
    contract = (
        DataContract.from_yaml(cfg.contract)
        if cfg.contract
        else default_contract(cfg.label_column, images=True)
    )
    train = read_image_set(cfg.data, cfg.label_column, cfg.image_column)
    test = None
    if cfg.test_data:
        test = read_image_set(cfg.test_data, cfg.label_column, cfg.image_column)
    report = validate_images(
        train, test, contract, docs_dir, image_size=cfg.image_size, channels=cfg.channels
    )
    return ImageData(train, test, report)


def prepare_image_data(
    data: ImageData, cfg: DataConfig, seed: int, dataset_dir: Path
) -> tuple[DatasetMeta, dict[str, dict[str, int]]]:
    """Write the prepared dataset of the images that decode: train/val/test splits (test
    from --test-data, or a stratified split made from `seed`), decoded at the dataset's
    size. Returns the meta and each split's class counts."""
    shape = image_shape(data.train, cfg.image_size, cfg.channels)
    train = _usable(data.train)
    if data.test is not None:
        test = _usable(data.test)
    else:
        train, test = split_frame(train, "label", cfg.test_fraction, seed, cfg.data)
    val = train
    if cfg.val_fraction > 0:
        train, val = split_frame(train, "label", cfg.val_fraction, seed)
    splits = {"train": (data.train, train), "val": (data.train, val)}
    splits["test"] = (data.test or data.train, test)
    classes = class_names(train["label"])
    written = {
        name: (
            image_set.load(frame["row"].tolist()),
            frame["path"].tolist(),
            frame["label"].tolist(),
        )
        for name, (image_set, frame) in splits.items()
    }
    meta = write_prepared_images(
        dataset_dir,
        written,
        classes,
        shape,
        cfg.label_column,
        data.report.dataset_hash,
        cfg.data,
    )
    counts = {
        name: {str(c): int(n) for c, n in frame["label"].value_counts().items()}
        for name, (_, frame) in splits.items()
        if name != "val" or cfg.val_fraction > 0
    }
    log.info(
        "prepared %s images of %s: %s",
        ", ".join(f"{len(f):,} {n}" for n, (_, f) in splits.items()),
        "x".join(map(str, shape)),
        dataset_dir,
    )
    return meta, counts


def _usable(image_set: ImageSet) -> pd.DataFrame:
    """The fact rows of the images that decode: row index, path and class."""
    rows = np.asarray(usable_rows(image_set), dtype=np.int64)
    facts = image_set.facts.iloc[rows]
    return pd.DataFrame(
        {"row": rows, "path": facts["path"].astype(str).to_numpy(),
         "label": facts["label"].astype(str).to_numpy()}
    )
