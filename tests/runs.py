"""A real run summary without Ray or KFP: the digits data validated, two teachers trained,
a student distilled from them (and a baseline without them) by the distill step's own loop
in this process (`workers=0`), all evaluated by `kdflow.steps.evaluate`. The pictures, the
report and the CLI use it (the fixtures are imported by tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def _fill_teacher_cache(dataset: Path, teacher_dirs: list[Path], storage_root: Path) -> None:
    """Each teacher's cache entry, computed in this process.

    `teacher_outputs` fills a missing entry by Ray Data, so it would start a local Ray
    (about 10 s on two cores, and Ray's processes for the rest of the session).
    `_teacher_task` fills it in this process (what `workers=0` runs); the metadata is what
    `teacher_outputs` matches (`run_dir` refuses to start Ray should it ever miss).
    """
    from kdflow.data.sources import load_meta
    from kdflow.distill import cache as teacher_cache
    from kdflow.distill.teachers import _teacher_task, teacher_spec

    meta = load_meta(str(dataset))
    key = teacher_cache.dataset_key(str(dataset))
    for folder in teacher_dirs:
        sha = teacher_spec(str(folder))["weights_sha256"]
        entry_meta = {"dataset_key": key, "teacher_sha256": sha, "top_k": 0,
                      "rows": meta.rows["train"], "classes": meta.n_classes}
        uri = teacher_cache.entry_uri(str(storage_root), key, sha, 0)
        _teacher_task(str(dataset), str(folder), "classification", uri, entry_meta)


def _no_ray(**_: Any) -> None:
    raise RuntimeError("tests/runs.py: a teacher missed the cache the fixture filled")


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding summary.json, as `kdflow run --output` leaves it."""
    from kdflow.config import DataConfig, DistillConfig, GateConfig, TeacherConfig
    from kdflow.distill.run import distill
    from kdflow.evaluation.cost import charge
    from kdflow.steps import compact_history, evaluate, train_teacher, validate_data

    root = tmp_path_factory.mktemp("run")
    dataset = root / "dataset"
    info = validate_data(DataConfig(), 0, dataset, root / "validation.md", root / "docs")
    teacher_dirs, teacher_histories, teacher_costs = [], [], []
    for i, spec in enumerate(["mlp:hidden=64", "cnn:channels=8-16,hidden=32"]):
        folder = root / f"teacher-{i}"
        result = train_teacher(dataset, spec, TeacherConfig(teacher_epochs=3), 0, folder)
        teacher_dirs.append(folder)
        teacher_histories.append(compact_history(result["history"]))
        teacher_costs.append(result["cost"])
    _fill_teacher_cache(dataset, teacher_dirs, root / "work")
    cfg = DistillConfig(student="mlp:hidden=16", student_epochs=4, temperature=4.0, alpha=0.5,
                        workers=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("kdflow.distill.teachers.ensure_ray", _no_ray)
        result = distill(dataset, teacher_dirs, cfg, root / "student", root / "baseline",
                         root / "work", "run-fixture", seed=0)
    student = compact_history(result["student"]["history"])
    baseline = compact_history(result["baseline"]["history"])
    lenient = GateConfig(min_retention=0, min_gain_over_baseline=-1, min_compression=1,
                         min_speedup=0, max_regression=1, max_ece=1, max_class_regression=1)
    summary = evaluate(
        dataset, teacher_dirs, root / "student", root / "baseline", lenient,
        f"sqlite:///{root / 'mlflow.db'}", "digits", info, root / "evaluation.md",
        histories={"teachers": teacher_histories, "student": student, "baseline": baseline},
        costs={"teachers": teacher_costs, "distill": {
            "record": charge(result["seconds"]["total"], result["seconds"]["total"]),
            "cache_fill_wall_s": result["seconds"]["teachers"]}},
    )
    out = root / "out"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return out


@pytest.fixture(scope="session")
def run_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())
