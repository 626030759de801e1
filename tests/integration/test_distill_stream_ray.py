"""The training split streamed through Ray Data (`stream_data: on`) in a real local Ray:
the epoch order survives a killed worker, data-parallel ranks take equal steps, inputs
and cached targets stay row-aligned, and a damaged cache entry is filled again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.numpy import load_file

from kdflow.config import DistillConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GROUP_ROWS = 200
"""Row groups of the streamed copy of digits: 1,293 training rows in 7 chunks."""


@pytest.fixture(scope="module")
def chunked_digits(digits_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits dataset with its training split rewritten in row groups of 200 rows."""
    folder = tmp_path_factory.mktemp("chunked") / "dataset"
    folder.mkdir()
    for name in ("meta.json", "val.parquet", "test.parquet"):
        (folder / name).write_bytes((digits_dataset / name).read_bytes())
    table = pq.read_table(digits_dataset / "train.parquet")
    pq.write_table(table, folder / "train.parquet", row_group_size=GROUP_ROWS)
    return folder


@pytest.fixture(scope="module")
def streamed_run(chunked_digits, small_teachers, tmp_path_factory, ray_tmp):
    """An undisturbed streamed run on two data-parallel workers."""
    from kdflow.distill.run import distill

    root = tmp_path_factory.mktemp("streamed")
    # Gradient accumulation too: DDP all-reduces through no_sync on every other batch.
    cfg = DistillConfig(student_epochs=2, workers=2, max_failures=1, stream_data="on",
                        grad_accum=2)
    result = distill(chunked_digits, small_teachers, cfg, root / "student", root / "baseline",
                     root / "work", "streamed", seed=0)
    return root, cfg, result


def _weights(folder: Path) -> dict[str, np.ndarray]:
    return load_file(str(folder / "model.safetensors"))


def test_streamed_run_trains_both_roles_on_every_row(streamed_run):
    _, _, result = streamed_run
    for role in ("student", "baseline"):
        assert result[role]["epochs"] == 2
        assert result[role]["val_accuracy"] > 0.3  # 10 classes: chance 0.1
    student = result["student"]["history"]
    assert all(h["soft_loss"] > 0 for h in student), "the student learns from the cache"


def test_killed_streamed_worker_resumes_with_the_same_epoch_order(
    streamed_run, chunked_digits, small_teachers, tmp_path
):
    """A worker dies after epoch 1; resumed from that checkpoint, epoch 2 streams the
    chunks and shuffle an undisturbed run streamed, so the models end identical."""
    from kdflow.distill.run import distill

    root, cfg, _ = streamed_run
    resumed = distill(chunked_digits, small_teachers, cfg, tmp_path / "student",
                      tmp_path / "baseline", root / "work", "streamed-killed", seed=0,
                      fail_at_epoch=1)
    assert [h["epoch"] for h in resumed["student"]["history"]] == [1, 2]
    for role in ("student", "baseline"):
        a, b = _weights(root / role), _weights(tmp_path / role)
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-6)


def test_streamed_blocks_hold_each_rows_own_targets(streamed_run, chunked_digits,
                                                    small_teachers):
    """A chunk's block pairs each row with the ensemble's targets of that very row: the
    teachers' outputs recomputed on the block's inputs give the same soft targets."""
    from kdflow.data.sources import open_source
    from kdflow.distill.stream import ChunkReader
    from kdflow.distill.targets import Ensemble, ensemble_targets, teacher_parts
    from kdflow.distill.teachers import load_teacher

    _, cfg, result = streamed_run
    source = open_source(str(chunked_digits))
    caches = [t["cache"] for t in result["teachers"]]
    ensemble = Ensemble.of(cfg, source.meta.n_classes, [0.5, 0.5], 0)
    block = ChunkReader(str(chunked_digits), None, None, caches, ensemble).read(
        source, 400, 600
    )
    expected = source.read("train", 400, 600)
    np.testing.assert_array_equal(block["x"], expected.x)
    np.testing.assert_array_equal(block["y"], expected.y)
    x = torch.from_numpy(block["x"])
    with torch.no_grad():
        parts = [teacher_parts(load_teacher(str(u), source.meta)[0].eval()(x).float(), 0)
                 for u in small_teachers]
    fresh = ensemble_targets(parts, source.meta.n_classes, cfg.temperature, cfg.ensemble,
                             [0.5, 0.5])
    np.testing.assert_allclose(block["soft"], fresh.dense.numpy(), atol=2e-3)


def test_damaged_cache_shard_is_filled_again_not_used(
    streamed_run, chunked_digits, small_teachers, tmp_path
):
    from kdflow.distill.cache import open_entry
    from kdflow.distill.run import distill

    root, cfg, result = streamed_run
    entry = open_entry(result["teachers"][0]["cache"])
    shard = Path(entry.uri) / entry.meta["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a torn upload
    assert "cannot be read" in entry.problem()
    again = distill(chunked_digits, small_teachers,
                    DistillConfig(student_epochs=1, workers=0, stream_data="on"),
                    tmp_path / "student", tmp_path / "baseline", root / "work", "refilled",
                    seed=0)
    assert [t["cache_hit"] for t in again["teachers"]] == [False, True]
    assert open_entry(result["teachers"][0]["cache"]).problem() is None


def test_a_teacher_past_the_memory_budget_trains_streamed(chunked_digits, tmp_path, monkeypatch,
                                                         caplog, ray_tmp):
    """Teacher training goes through the same loop and the same `auto` rule (here with the
    budget at 0 bytes): it reads its rows chunk by chunk through Ray Data, started by the
    loop itself in this process, and learns from them."""
    import logging

    from kdflow.config import TeacherConfig
    from kdflow.distill import stream
    from kdflow.distill.driver import train_teacher

    monkeypatch.setattr(stream, "STREAM_BYTES", 0)
    with caplog.at_level(logging.INFO, logger="kdflow"):
        result = train_teacher(str(chunked_digits), "mlp:hidden=32",
                               TeacherConfig(teacher_epochs=3), 0, tmp_path / "teacher")
    assert "rank 0 streams 1293 rows in 7 chunks" in caplog.text
    assert result["val_accuracy"] > 0.5  # 10 classes: chance 0.1
    assert (tmp_path / "teacher" / "model.safetensors").is_file()
