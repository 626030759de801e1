"""Distillation on text, in this process (`workers=0`): a tiny BERT teacher trained by
`train_teacher`, a student made from it by `hf-from-teacher:`, offline and online KD,
feature and attention hints on the transformers' taps, and a student that tokenizes
otherwise refused online."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from kdflow.config import DistillConfig, TeacherConfig
from kdflow.distill.driver import run_distillation, train_teacher
from kdflow.errors import ConfigError, KdflowError
from kdflow.models.hf import load_hf
from tests.unit.text_helpers import text_dataset, tiny_bert

STUDENT = "hf-from-teacher:num_hidden_layers=1"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return text_dataset(tmp_path_factory.mktemp("text") / "dataset", rows=200, max_length=16)


@pytest.fixture(scope="module")
def teacher(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("teacher") / "bert"
    result = train_teacher(
        str(dataset), tiny_bert(2), TeacherConfig(teachers=[tiny_bert(2)], teacher_epochs=2,
                                                  teacher_lr=5e-3, batch_size=16),
        0, folder,
    )
    return folder, result


def settings(**kwargs: Any) -> DistillConfig:
    values: dict[str, Any] = {
        "student": STUDENT,
        "student_epochs": 2,
        "student_lr": 3e-3,
        "student_batch_size": 32,
        "workers": 0,
        "alpha": 0.5,
        **kwargs,
    }
    return DistillConfig(**values)


def distil(dataset: Path, teacher: Path, cfg: DistillConfig, root: Path) -> dict[str, Any]:
    outputs = {"student": str(root / "student"), "baseline": str(root / "baseline")}
    return run_distillation(str(dataset), [str(teacher)], cfg, outputs, str(root / "storage"),
                            "run", seed=0)


def test_the_teacher_trains_and_saves_a_transformers_folder(teacher: tuple[Path, dict]) -> None:
    folder, result = teacher
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert result["tokenize_seconds"] > 0
    assert 0.0 <= result["val_accuracy"] <= 1.0 and result["params"] > 0
    spec = json.loads((folder / "spec.json").read_text())
    assert spec["kind"] == "hf" and spec["role"] == "teacher"
    model, _ = load_hf(folder)
    assert model.n_classes == 2


def test_offline_kd_trains_a_student_made_from_the_teacher(
    dataset: Path, teacher: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, _ = teacher
    result = distil(dataset, folder, settings(), tmp_path)
    student = result["student"]
    assert [h["epoch"] for h in student["history"]] == [1, 2]
    assert {"loss", "hard_loss", "soft_loss", "val_accuracy"} <= set(student["history"][0])
    assert student["history"][0]["soft_loss"] > 0
    assert "feature_loss" not in student["history"][0]
    assert result["baseline"]["history"]
    assert not result["teachers"][0]["cache_hit"]
    saved = json.loads((tmp_path / "student" / "spec.json").read_text())
    assert saved["kind"] == "hf" and saved["model"]["layers"] == 1
    folder_of_template = tmp_path / "storage" / "templates" / "run"
    assert json.loads((folder_of_template / "spec.json").read_text())["from_teacher"]["layers"] \
        == [0]
    # Trained: no longer the template the teacher's layer 0 gave it.
    template = load_file(str(folder_of_template / "model.safetensors"))
    trained = load_file(str(tmp_path / "student" / "model.safetensors"))
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not (template[name] == trained[name]).all()
    # The teachers' logits and the tokens are cached under the storage root.
    assert list((tmp_path / "storage" / "token-cache").rglob("train.safetensors"))


def test_online_kd_with_feature_and_attention_hints_reports_their_losses(
    dataset: Path, teacher: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, _ = teacher
    cfg = settings(
        teacher_mode="online",
        feature_weight=0.1,
        feature_layers=["hidden.2=hidden.1"],
        attention_weight=0.1,
    )
    result = distil(dataset, folder, cfg, tmp_path)
    history = result["student"]["history"]
    assert len(history) == 2
    for epoch in history:
        assert epoch["feature_loss"] > 0 and epoch["attention_loss"] > 0
    assert "feature_loss" not in result["baseline"]["history"][0]
    student, _ = load_hf(tmp_path / "student")
    assert not any(k.startswith(("projections", "student.")) for k in student.state_dict())


def test_online_kd_refuses_a_student_with_another_tokenizer(
    dataset: Path, teacher: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, _ = teacher
    cfg = settings(student=tiny_bert(1, vocab_size=60), teacher_mode="online")
    with pytest.raises(KdflowError, match="tokenizes text otherwise than the student"):
        distil(dataset, folder, cfg, tmp_path)
    assert not (tmp_path / "student").exists()


def test_online_kd_with_another_tokenizer_is_a_config_error_before_training(
    dataset: Path, teacher: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, _ = teacher
    cfg = settings(student=tiny_bert(1, vocab_size=60), teacher_mode="online")
    with pytest.raises(ConfigError, match="tokenizes text otherwise") as caught:
        distil(dataset, folder, cfg, tmp_path)
    assert caught.value.option == "--teacher-mode"


def test_distilberts_cosine_loss_compares_hidden_states_token_by_token(
    dataset: Path, teacher: tuple[Path, dict], tmp_path: Path
) -> None:
    """`--feature-loss cosine`: per-token hidden states of equal width, no projection, the
    loss 1 − cos in [0, 2]; it trains the student's layers toward the teacher's."""
    from kdflow.distill import hints
    from kdflow.models.sources import source_for

    folder, _ = teacher
    cfg = settings(teacher_mode="online", feature_weight=1.0, feature_loss="cosine",
                   feature_layers=["hidden.2=hidden.1"])
    result = distil(dataset, folder, cfg, tmp_path)
    losses = [epoch["feature_loss"] for epoch in result["student"]["history"]]
    assert all(0.0 < loss < 2.0 for loss in losses)
    assert losses[-1] < losses[0]
    student, _ = load_hf(tmp_path / "student")
    teacher_model, _ = load_hf(folder)
    plan = hints.make_plan(cfg, teacher_model, student, source_for("hf:x"), source_for("hf:x"))
    (pair,) = plan.pairs
    assert pair.tokens and pair.student_width == pair.teacher_width == 32
    assert isinstance(pair.projection(), torch.nn.Identity)


def test_the_cosine_loss_refuses_layers_it_cannot_compare(
    dataset: Path, teacher: tuple[Path, dict]
) -> None:
    from kdflow.distill import hints
    from kdflow.models.sources import source_for

    folder, _ = teacher
    model, _ = load_hf(folder)
    cfg = settings(teacher_mode="online", feature_weight=1.0, feature_loss="cosine",
                   feature_layers=["hidden.2=penultimate"])
    with pytest.raises(ConfigError, match="--feature-loss cosine: compares hidden states"):
        hints.make_plan(cfg, model, model, source_for("hf:x"), source_for("hf:x"))
