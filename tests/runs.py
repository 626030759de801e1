"""A real run summary without Ray or KFP: the digits data validated, two teachers trained,
a student distilled from them (and a baseline without them) by the shared training loop,
all evaluated by `kdflow.steps.evaluate`. The pictures, the report and the CLI use it
(the fixtures are imported by tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def _train_student(dataset: Path, teacher_dirs: list[Path], folder: Path, kd: bool,
                   epochs: int = 4) -> list[dict[str, Any]]:
    """An mlp:hidden=16 student, with the ensemble's soft targets (kd) or labels only."""
    import numpy as np
    import torch

    from kdflow.data.prepared import read_meta, read_split
    from kdflow.distill.training import accuracy, make_loader, seed_everything, train_epoch
    from kdflow.models.artifacts import load_model, save_model
    from kdflow.models.zoo import build_classifier

    meta = read_meta(dataset)
    train, val = read_split(dataset, "train"), read_split(dataset, "val")
    temperature = 4.0
    soft = None
    if kd:
        teachers = [load_model(d)[0].eval() for d in teacher_dirs]
        with torch.no_grad():
            x = torch.from_numpy(np.array(train.x))
            soft = torch.stack([torch.softmax(t(x) / temperature, -1) for t in teachers]).mean(0)
        soft = soft.numpy()
    seed_everything(0)
    model = build_classifier("mlp:hidden=16", meta.input_shape, meta.n_classes, meta.n_features)
    model.set_normalisation(torch.from_numpy(train.x.mean(0)),
                            torch.from_numpy(train.x.std(0, ddof=1)))
    loader = make_loader(train, 64, 0, soft=soft)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for epoch in range(1, epochs + 1):
        loss, hard, soft_part = train_epoch(model, loader, optimizer, torch.device("cpu"),
                                            temperature=temperature, alpha=0.5 if kd else 1.0,
                                            use_soft=kd)
        history.append({"epoch": epoch, "loss": loss, "hard_loss": hard,
                        "soft_loss": soft_part, "val_accuracy": accuracy(model, val)})
    model.eval()
    save_model(model, folder, meta.classes, meta.feature_columns, {"role": "student"})
    return history


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding summary.json, as `kdflow run --output` leaves it."""
    from kdflow.config import DataConfig, GateConfig, TeacherConfig
    from kdflow.steps import evaluate, train_teacher, validate_data

    root = tmp_path_factory.mktemp("run")
    dataset = root / "dataset"
    info = validate_data(DataConfig(), 0, dataset, root / "validation.md", root / "docs")
    teacher_dirs, teacher_histories = [], []
    for i, spec in enumerate(["mlp:hidden=64", "cnn:channels=8-16,hidden=32"]):
        folder = root / f"teacher-{i}"
        result = train_teacher(dataset, spec, TeacherConfig(teacher_epochs=3), 0, folder)
        teacher_dirs.append(folder)
        teacher_histories.append(result["history"])
    student = _train_student(dataset, teacher_dirs, root / "student", kd=True)
    baseline = _train_student(dataset, teacher_dirs, root / "baseline", kd=False)
    lenient = GateConfig(min_retention=0, min_gain_over_baseline=-1, min_compression=1,
                         min_speedup=0, max_regression=1, max_ece=1)
    summary = evaluate(
        dataset, teacher_dirs, root / "student", root / "baseline", lenient,
        f"sqlite:///{root / 'mlflow.db'}", "digits", info, root / "evaluation.md",
        histories={"teachers": teacher_histories, "student": student, "baseline": baseline},
    )
    out = root / "out"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return out


@pytest.fixture(scope="session")
def run_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())
