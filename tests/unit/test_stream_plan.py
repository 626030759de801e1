"""The streamed training split's epoch plan and when a run streams (kdflow.distill.stream)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdflow.config import DistillConfig
from kdflow.distill import stream
from kdflow.errors import ConfigError

CHUNKS = [(0, 200), (200, 400), (400, 600), (600, 800), (800, 1000), (1000, 1200),
          (1200, 1293)]


def test_every_chunk_is_dealt_once_and_every_rank_takes_the_same_rows():
    plans, per_rank = stream.epoch_plan(CHUNKS, seed=7, world=2)
    # Each chunk goes to one rank; a rank short of rows wraps around its own chunks.
    owners = [{c for c in plan} for plan in plans]
    assert owners[0].isdisjoint(owners[1]) and owners[0] | owners[1] == set(CHUNKS)
    dealt = [sum(b - a for a, b in set(plan)) for plan in plans]
    assert per_rank == max(dealt)
    assert all(sum(b - a for a, b in plan) >= per_rank for plan in plans)
    # Dealt by rows, the ranks' shares differ by at most one chunk.
    assert max(dealt) - min(dealt) <= max(b - a for a, b in CHUNKS)


def test_the_plan_depends_on_the_seed_alone():
    assert stream.epoch_plan(CHUNKS, 3, 2) == stream.epoch_plan(CHUNKS, 3, 2)
    orders = {tuple(stream.epoch_plan(CHUNKS, s, 1)[0][0]) for s in range(8)}
    assert len(orders) > 1, "epochs see the chunks in different orders"
    one, rows = stream.epoch_plan(CHUNKS, 5, 1)
    assert sorted(one[0]) == CHUNKS and rows == 1293


def test_stream_data_is_checked_against_the_data_and_the_setting():
    with pytest.raises(ConfigError, match="--stream-data on: a corpus split"):
        stream.check_applies("on", "corpus", "causal-lm")
    assert stream.check_applies("auto", "corpus", "causal-lm") is False
    assert stream.check_applies("on", "image", "classification") is True
    with pytest.raises(ConfigError, match="--stream-data: must be"):
        DistillConfig(stream_data="yes")


def test_auto_streams_past_the_budget(digits_dataset: Path, monkeypatch):
    from kdflow.data.sources import open_source

    source = open_source(str(digits_dataset))
    rows = source.rows("train")
    assert not stream.needs_streaming("auto", source, rows, 1, 0, "classification")
    assert stream.needs_streaming("on", source, rows, 1, 0, "classification")
    # 1,293 rows of 64 float32 features and a label: 336 KB; past a 100 KB budget.
    monkeypatch.setattr(stream, "STREAM_BYTES", 100_000)
    assert stream.needs_streaming("auto", source, rows, 1, 0, "classification")
    assert not stream.needs_streaming("auto", source, rows, 4, 0, "classification")
    assert not stream.needs_streaming("off", source, rows, 1, 0, "classification")
