"""The streaming scan: exact counts over every row, whatever the batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdflow.errors import ConfigError
from kdflow.validation.scan import ValidationSettings, scan_frame, scan_uri
from tests.unit.validation_helpers import make_split


def test_the_scan_counts_every_row_across_batches() -> None:
    frame = make_split(1000, seed=0)
    frame.loc[[10, 500, 999], "f0"] = np.nan
    frame.loc[700, "f1"] = np.inf
    settings = ValidationSettings(sample_rows=100, batch_rows=64, example_rows=2)
    scan = scan_frame(frame, "label", settings)
    statistics = scan.statistics()
    assert statistics["rows"] == 1000
    assert statistics["label"]["counts"] == {"0": 334, "1": 333, "2": 333}
    assert statistics["features"]["f0"]["nulls"] == 3
    assert statistics["features"]["f1"]["posinf"] == 1
    assert scan.numeric["f0"].rows["null"] == [10, 500]  # the first example_rows only
    assert len(scan.sample) == 100


def test_the_scan_finds_repeated_rows() -> None:
    frame = make_split(50, seed=0)
    doubled = pd.concat([frame, frame.iloc[[3, 7]]], ignore_index=True)
    scan = scan_frame(doubled, "label")
    assert scan.duplicate_rows == 2
    assert scan.duplicate_examples == [
        {"row": 50, "same_as_row": 3},
        {"row": 51, "same_as_row": 7},
    ]
    assert scan.statistics()["duplicate_rows"] == 2


def test_a_file_scans_like_its_frame(tmp_path: Path) -> None:
    frame = make_split(300, seed=0)
    frame.to_parquet(tmp_path / "split.parquet")
    from_file = scan_uri(str(tmp_path / "split.parquet"), "label").statistics()
    assert from_file == scan_frame(frame, "label").statistics()
    assert len(from_file["content_hash"]) == 64


def test_settings_refuse_an_empty_batch() -> None:
    with pytest.raises(ConfigError, match="batch_rows must be at least 1"):
        ValidationSettings(batch_rows=0)
