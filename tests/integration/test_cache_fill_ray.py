"""The teacher cache filled by Ray Data batch inference (`kdflow.distill.cache_fill`) in a
real local Ray: the cached logits are the teacher's on the training rows, in full and at
top-k, row for row even when the blocks come back shuffled; a second run reuses the entry,
an entry of the old format is filled again, and a teacher that cannot load is named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kdflow.config import DistillConfig
from kdflow.data.prepared import read_split
from kdflow.data.sources import load_meta
from kdflow.distill import cache as teacher_cache
from kdflow.distill import cache_fill
from kdflow.distill.tasks import Classification
from kdflow.distill.teachers import load_teacher, teacher_outputs
from kdflow.errors import KdflowError
from kdflow.models.inference import predict_logits

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _fill(dataset: Path, teachers: list[Path], root: Path, top_k: int = 0, actors: int = 2):
    cfg = DistillConfig(cache_actors=actors)
    meta = load_meta(str(dataset))
    return teacher_outputs(str(dataset), [str(t) for t in teachers], meta, cfg, str(root),
                           top_k, Classification())


def _logits(teacher: Path, dataset: Path) -> np.ndarray:
    model, _ = load_teacher(str(teacher), load_meta(str(dataset)))
    return predict_logits(model, read_split(dataset, "train").x).numpy()


@pytest.mark.parametrize("top_k", [0, 3])
def test_the_ray_data_fill_caches_the_teachers_logits_on_the_training_rows(
    digits_dataset, small_teachers, tmp_path, ray_tmp, top_k
):
    (out,) = _fill(digits_dataset, small_teachers[1:], tmp_path, top_k)
    assert not out.cache_hit and out.cache is not None
    entry = teacher_cache.open_entry(out.cache)
    assert isinstance(entry, teacher_cache.ShardedEntry)
    rows = load_meta(str(digits_dataset)).rows["train"]
    parts = entry.train_rows(0, rows)
    logits = _logits(small_teachers[1], digits_dataset)
    if not top_k:
        assert parts["train"].dtype == np.float16 and parts["train"].shape == (rows, 10)
        np.testing.assert_allclose(parts["train"], logits, rtol=1e-3, atol=1e-3)
    else:
        values, indices = np.sort(logits, -1)[:, ::-1][:, :3], np.argsort(-logits, -1)[:, :3]
        np.testing.assert_allclose(parts["train_values"], values, rtol=1e-3, atol=1e-3)
        assert (parts["train_indices"] == indices).mean() > 0.99  # near-ties may swap
        assert parts["train_indices"].dtype == np.int16


def test_rows_stay_aligned_when_two_actors_get_the_blocks_shuffled(
    digits_dataset, small_teachers, tmp_path, ray_tmp, monkeypatch
):
    """The read hands the actors every row in a random order, 128 at a time: the shards
    come back in no order, none contiguous, and each row's logits are still its own."""
    read = cache_fill._read_batch

    def shuffled(batch, dataset_uri, columns, block_rows):
        import numpy as np
        import pyarrow as pa

        table = pa.concat_tables(list(read(batch, dataset_uri, columns, block_rows)))
        table = table.take(np.random.default_rng(0).permutation(table.num_rows))
        for start in range(0, table.num_rows, block_rows):
            yield table.slice(start, block_rows)

    monkeypatch.setattr(cache_fill, "_read_batch", shuffled)
    monkeypatch.setattr(cache_fill, "BLOCK_ROWS", 128)
    (out,) = _fill(digits_dataset, small_teachers[:1], tmp_path, actors=2)
    entry = teacher_cache.open_entry(out.cache)
    shards = entry.meta["shards"]
    assert len(shards) >= 10
    assert all(s["last"] - s["first"] + 1 > s["rows"] for s in shards), "rows scattered"
    rows = entry.meta["rows"]
    np.testing.assert_allclose(entry.train_rows(0, rows)["train"],
                               _logits(small_teachers[0], digits_dataset), rtol=1e-3, atol=1e-3)
    # A worker's shard of rows: only its rows, each in its place.
    np.testing.assert_array_equal(entry.train_rows(300, 700)["train"],
                                  entry.train_rows(0, rows)["train"][300:700])


def test_a_second_run_reuses_the_entry_and_an_old_format_one_is_filled_again(
    digits_dataset, small_teachers, tmp_path, ray_tmp, monkeypatch
):
    (first,) = _fill(digits_dataset, small_teachers[:1], tmp_path, actors=1)
    entry = teacher_cache.open_entry(first.cache)
    fill = entry.meta["shards"][0]["file"].split("/")[0]
    before = entry.train_rows(0, entry.meta["rows"])["train"]

    def no_fill(*args, **kwargs):
        raise AssertionError("a cached teacher must not be filled again")

    with monkeypatch.context() as patch:
        patch.setattr(cache_fill, "fill_ray", no_fill)
        (again,) = _fill(digits_dataset, small_teachers[:1], tmp_path, actors=1)
    assert again.cache_hit and again.cache == first.cache
    np.testing.assert_array_equal(again.val_logits, first.val_logits)

    # Format 1 (the safetensors file of before, at its own name) is never read, and a
    # meta.json of another format is filled again; the shards it listed go.
    old = teacher_cache.entry_uri(str(tmp_path), entry.meta["dataset_key"],
                                  entry.meta["teacher_sha256"], 0, sharded=False)
    teacher_cache.write_entry(old, {"train": np.zeros((3, 10), np.float16)},
                              np.zeros((2, 10), np.float16), dict(entry.meta, rows=3))
    meta_json = Path(first.cache) / "meta.json"
    meta_json.write_text(json.dumps(dict(entry.meta, format=1)))
    (refilled,) = _fill(digits_dataset, small_teachers[:1], tmp_path, actors=1)
    assert not refilled.cache_hit
    now = teacher_cache.open_entry(refilled.cache)
    assert now.meta["format"] == teacher_cache.SHARDED_FORMAT
    assert not (Path(first.cache) / fill).exists(), "the superseded fill's shards are gone"
    np.testing.assert_array_equal(now.train_rows(0, now.meta["rows"])["train"], before)


def test_a_teacher_whose_weights_do_not_load_is_named_not_a_ray_traceback(
    digits_dataset, small_teachers, tmp_path, ray_tmp
):
    broken = tmp_path / "broken-teacher"
    shutil.copytree(small_teachers[0], broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(KdflowError) as failed:
        _fill(digits_dataset, [broken], tmp_path / "storage", actors=1)
    message = str(failed.value)
    assert message.startswith(f"{broken}/model.safetensors: SHA-256 does not match spec.json")
    assert "Traceback" not in message and "RayTaskError" not in message
