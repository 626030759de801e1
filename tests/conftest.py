"""Shared fixtures: a prepared digits dataset, small trained teachers, a quiet environment."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Quiet, local, offline: no GX analytics, no stray tracking server from the environment.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("RAY_ADDRESS", None)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_tmp() -> Path:
    """Ray's socket paths must stay short: a /tmp folder rather than pytest's deep tmp_path."""
    folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    os.environ["KDFLOW_RAY_TMP"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def digits_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """builtin:digits split 80/20 then 90/10, written as a prepared dataset folder."""
    from kdflow.data.prepared import builtin_frame, frame_sha256, split_frame, write_prepared

    frame = builtin_frame("digits")
    train, test = split_frame(frame, "label", 0.2, seed=0)
    train, val = split_frame(train, "label", 0.1, seed=0)
    folder = tmp_path_factory.mktemp("digits") / "dataset"
    write_prepared(
        folder,
        {"train": train, "val": val, "test": test},
        "label",
        [1, 8, 8],
        frame_sha256(frame),
        "builtin:digits",
    )
    return folder


@pytest.fixture(scope="session")
def small_teachers(digits_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two quickly trained teachers (a few epochs: enough to be far better than chance)."""
    from kdflow.config import TeacherConfig
    from kdflow.steps import train_teacher

    root = tmp_path_factory.mktemp("teachers")
    folders = []
    for i, spec in enumerate(["mlp:hidden=128", "cnn:channels=8-16,hidden=32"]):
        folder = root / f"teacher-{i}"
        train_teacher(digits_dataset, spec, TeacherConfig(teacher_epochs=4), 0, folder)
        folders.append(folder)
    return folders


# A real run summary (validated data, trained teachers, KD student, evaluate): tests/runs.py
from tests.runs import run_dir, run_summary  # noqa: E402, F401
