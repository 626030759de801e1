"""The champion is scored on this run's test rows by column name: the same feature columns
in another order are the same inputs (reordered, not refused), and other columns fail the
champion gate closed, naming what differs."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from kdflow.data.prepared import read_split, write_prepared
from kdflow.evaluation import summary
from kdflow.models.sources import build, source_for


def frame(columns: str) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 90
    values = {"a": rng.normal(size=n), "b": 3 * rng.normal(size=n), "c": rng.normal(size=n) - 2,
              "d": rng.normal(size=n)}
    return pd.DataFrame({**{c: values[c] for c in columns},
                         "label": [str(i % 3) for i in range(n)]})


def prepared(folder: Path, columns: str):
    meta = write_prepared(folder, {"train": frame(columns), "test": frame(columns)}, "label",
                          None, columns * 16, "mem")
    return meta, read_split(folder, "test")


@pytest.fixture
def champion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    meta, test = prepared(tmp_path / "abc", "abc")
    folder = source_for("mlp").save(build("mlp:hidden=4", meta, None), tmp_path / "champ",
                                    meta, {})
    monkeypatch.setattr(summary, "champion_version",
                        lambda uri, name: SimpleNamespace(version="3", tags={}))
    monkeypatch.setattr(summary, "download_model", lambda uri, model_uri, dst: Path(
        shutil.copytree(folder, dst / "champion")))
    found, reason = summary.champion_comparison(None, "m", meta, test)
    assert reason is None and found is not None
    return SimpleNamespace(found=found, root=tmp_path)


def test_the_same_columns_in_another_order_are_scored_by_name(champion) -> None:
    meta, test = prepared(champion.root / "cab", "cab")
    found, reason = summary.champion_comparison(None, "m", meta, test)
    assert reason is None and found is not None
    assert (found["predictions"] == champion.found["predictions"]).all()
    assert found["accuracy"] == champion.found["accuracy"]


def test_other_columns_fail_closed_and_say_which(champion) -> None:
    meta, test = prepared(champion.root / "abd", "abd")
    found, reason = summary.champion_comparison(None, "m", meta, test)
    assert found is None
    assert reason == ("champion v3 not compared: it reads other feature columns; this data "
                      "lacks c; it never read d")
