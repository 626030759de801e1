"""The teacher-output cache (`kdflow.distill.cache`): entries read by byte range, keyed by
the data split, and their size in full and at top-k."""

from __future__ import annotations

import numpy as np
import pytest

from kdflow.distill import cache as teacher_cache
from kdflow.errors import DataError
from tests.unit.distill_helpers import prepared


def test_cache_entry_reads_one_shard_by_byte_range(tmp_path):
    logits = np.random.default_rng(0).normal(size=(50, 7)).astype(np.float16)
    val = np.ones((5, 7), np.float16)
    meta = {"dataset_key": "d", "teacher_sha256": "t", "top_k": 0, "rows": 50, "classes": 7}
    uri = str(tmp_path / "cache" / "e.safetensors")
    teacher_cache.write_entry(uri, {"train": logits}, val, meta)
    entry = teacher_cache.CacheEntry.open(uri)
    assert entry is not None and entry.matches(meta)
    assert not entry.matches(meta | {"rows": 51})
    np.testing.assert_array_equal(entry.train_rows(12, 31)["train"], logits[12:31])
    np.testing.assert_array_equal(entry.rows("val"), val)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["e.safetensors"]
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 4)
    assert teacher_cache.CacheEntry.open(str(tmp_path / "junk.safetensors")) is None
    assert teacher_cache.CacheEntry.open(str(tmp_path / "missing.safetensors")) is None


def test_cache_key_changes_when_the_split_changes(tmp_path):
    a = teacher_cache.dataset_key(str(prepared(tmp_path / "a", seed=0)))
    b = teacher_cache.dataset_key(str(prepared(tmp_path / "b", seed=1)))
    again = teacher_cache.dataset_key(str(prepared(tmp_path / "c", seed=0)))
    assert a != b and a == again


def test_cache_memory_in_full_and_at_top_k():
    assert teacher_cache.entry_bytes(60_000, 10) == 1_200_000
    assert teacher_cache.entry_bytes(1_281_167, 1000, top_k=32) == 1_281_167 * 32 * 4
    assert teacher_cache.entry_bytes(100, 50_000, top_k=8) == 100 * 8 * 6


def _sharded(tmp_path, logits, order, block=7):
    """An entry whose shards hold the rows in `order`, `block` rows a shard."""
    meta = {"dataset_key": "d", "teacher_sha256": "t", "top_k": 0, "rows": len(logits),
            "classes": logits.shape[1]}
    uri = str(tmp_path / "entry")
    folder = teacher_cache.fill_folder(uri)
    shards = [
        teacher_cache.write_shard(folder, teacher_cache.shard_table(rows, {"train": logits[rows]}))
        for rows in (order[i : i + block] for i in range(0, len(order), block))
    ]
    return uri, meta, shards


def test_sharded_entry_places_each_row_by_its_index_whatever_the_shard_order(tmp_path):
    logits = np.random.default_rng(0).normal(size=(50, 7)).astype(np.float16)
    order = np.random.default_rng(1).permutation(50)
    uri, meta, shards = _sharded(tmp_path, logits, order)
    teacher_cache.commit_sharded(uri, np.ones((5, 7)), meta, shards[::-1])
    entry = teacher_cache.open_entry(uri)
    assert isinstance(entry, teacher_cache.ShardedEntry) and entry.matches(meta)
    np.testing.assert_array_equal(entry.train_rows(0, 50)["train"], logits)
    np.testing.assert_array_equal(entry.train_rows(12, 31)["train"], logits[12:31])
    np.testing.assert_array_equal(entry.rows("val"), np.ones((5, 7), np.float16))
    assert not entry.matches(meta | {"top_k": 3})


def test_sharded_entry_reads_only_the_shards_that_hold_the_rows(tmp_path):
    logits = np.arange(40 * 3, dtype=np.float16).reshape(40, 3)
    uri, meta, shards = _sharded(tmp_path, logits, np.arange(40), block=10)
    teacher_cache.commit_sharded(uri, np.zeros((2, 3)), meta, shards)
    (tmp_path / "entry" / shards[0]["file"]).unlink()  # rows 0-9
    entry = teacher_cache.open_entry(uri)
    np.testing.assert_array_equal(entry.train_rows(10, 40)["train"], logits[10:])


def test_sharded_entry_with_a_row_missing_or_twice_is_an_error_not_misaligned(tmp_path):
    logits = np.zeros((20, 4), np.float16)
    order = np.r_[np.arange(19), 5]  # row 19 missing, row 5 twice
    uri, meta, shards = _sharded(tmp_path, logits, order)
    teacher_cache.commit_sharded(uri, np.zeros((2, 4)), meta, shards)
    with pytest.raises(DataError, match=r"rows 0-20 came 20 times for 20 rows \(1 missing\)"):
        teacher_cache.open_entry(uri).train_rows(0, 20)


def test_a_fill_short_of_rows_is_not_committed(tmp_path):
    logits = np.zeros((20, 4), np.float16)
    uri, meta, shards = _sharded(tmp_path, logits, np.arange(14))
    with pytest.raises(DataError, match="the fill wrote 14 rows; the train split has 20"):
        teacher_cache.commit_sharded(uri, np.zeros((2, 4)), meta, shards)
    assert teacher_cache.open_entry(uri) is None


def test_an_entry_of_another_format_does_not_match(tmp_path):
    logits = np.zeros((7, 4), np.float16)
    uri, meta, shards = _sharded(tmp_path, logits, np.arange(7))
    teacher_cache.commit_sharded(uri, np.zeros((2, 4)), meta, shards)
    meta_json = tmp_path / "entry" / "meta.json"
    meta_json.write_text(meta_json.read_text().replace('"format": 2', '"format": 1'))
    assert not teacher_cache.open_entry(uri).matches(meta)
    meta_json.write_text("{not json")
    assert teacher_cache.open_entry(uri) is None
