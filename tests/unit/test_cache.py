"""The teacher-output cache (`kdflow.distill.cache`): entries read by byte range, keyed by
the data split, and their size in full and at top-k."""

from __future__ import annotations

import numpy as np

from kdflow.distill import cache as teacher_cache
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
