"""Data sources (`kdflow.data.sources`): a prepared dataset read by split, by row range
(a worker's shard) or streamed (teacher inference), and its normalisation statistics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from kdflow.data.sources import ColumnSource, open_source
from kdflow.errors import ConfigError, DataError
from tests.unit.distill_helpers import prepared


def test_a_row_range_is_read_across_row_groups(tmp_path):
    data = prepared(tmp_path / "data")
    table = pq.read_table(data / "train.parquet")
    pq.write_table(table, data / "train.parquet", row_group_size=10)
    source = open_source(str(data))
    part = source.read("train", 8, 27)
    expected = table.slice(8, 19).to_pandas()
    np.testing.assert_array_equal(part.y, expected.pop("label").to_numpy())
    np.testing.assert_array_equal(part.x, expected.to_numpy(np.float32))
    assert source.read("train", 5, 5).x.shape == (0, 4)


def test_a_split_streams_in_order_in_batches_of_the_asked_size(tmp_path):
    source = open_source(str(prepared(tmp_path / "data")))
    streamed = list(source.stream("train", batch_rows=32))
    assert [len(b) for b in streamed[:-1]] == [32] * (len(streamed) - 1)
    np.testing.assert_array_equal(np.concatenate(streamed), source.read("train").x)
    assert sum(len(b) for b in streamed) == source.rows("train")


def test_input_stats_are_the_training_split_mean_and_std(tmp_path):
    data = prepared(tmp_path / "data")
    x = pd.read_parquet(data / "train.parquet").drop(columns="label").to_numpy(np.float64)
    mean, std = open_source(str(data)).input_stats()
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, x.std(0, ddof=1), rtol=1e-6)


def test_a_dataset_without_a_kind_is_read_as_feature_columns(tmp_path):
    source = open_source(str(prepared(tmp_path / "data")))
    assert isinstance(source, ColumnSource)
    assert source.meta.feature_columns == list("abcd")


def test_a_folder_that_is_not_a_prepared_dataset_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"not a prepared kdflow dataset \(no meta.json\)"):
        open_source(str(tmp_path))


def test_a_dataset_of_an_unknown_kind_names_the_kinds_this_kdflow_reads(tmp_path):
    data = prepared(tmp_path / "data")
    meta = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps(meta | {"kind": "images"}))
    with pytest.raises(ConfigError, match="data of kind 'images'; this kdflow reads columns"):
        open_source(str(data))
