"""The driver (`kdflow.distill.driver`) without Ray: a teacher trained through the loop
(its best validation epoch kept, its history, its saved folder), and the settings that
depend on the teachers, checked before Ray Train starts."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from kdflow.config import DistillConfig, TeacherConfig
from kdflow.data.prepared import DatasetMeta
from kdflow.data.sources import open_source
from kdflow.distill.driver import check_teacher_settings, teacher_training, train_teacher
from kdflow.distill.loop import WorkerJob, train
from kdflow.distill.step import Role
from kdflow.errors import ConfigError
from kdflow.models.artifacts import load_model, save_model
from kdflow.models.inference import accuracy
from kdflow.models.zoo import build_classifier
from tests.unit.distill_helpers import blobs

CPU = torch.device("cpu")
SPEC = "mlp:hidden=8"


class Snapshots:
    """A reporter that keeps the teacher's weights after every epoch (the reporter of
    `train_teacher` hands on only the metrics)."""

    rank, world, device = 0, 1, CPU

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def resume(self) -> None:
        return None

    def prepare(self, model: nn.Module) -> nn.Module:
        return model

    def report(
        self, stats: dict[str, Any], roles: list[Role], epoch: int, history: list[dict[str, Any]]
    ) -> None:
        self.weights[epoch] = {k: v.clone() for k, v in roles[0].classifier.state_dict().items()}


def weights_by_epoch(dataset: str, cfg: TeacherConfig, seed: int) -> dict[int, dict]:
    """The teacher's weights after each epoch of the run `train_teacher(dataset, SPEC, cfg,
    seed, ...)` makes (the same job: the same batches, the same initial weights)."""
    reporter = Snapshots()
    job = WorkerJob(
        cfg=teacher_training(cfg, SPEC), dataset=dataset, roles=["teacher"], seed=seed, run_dir=""
    )
    train(job, reporter)
    return reporter.weights


def assert_same_weights(saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]):
    assert set(saved) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=0)


def test_a_teacher_keeps_the_weights_of_its_best_validation_epoch(tmp_path):
    # Validation labels are the training labels flipped: the more the teacher learns, the
    # worse it does there, so the best epoch comes before the last one.
    data = str(blobs(tmp_path / "data", flip_val=True))
    cfg = TeacherConfig(teacher_epochs=4, teacher_lr=0.05, batch_size=16)
    result = train_teacher(data, SPEC, cfg, 0, tmp_path / "teacher")
    accs = [h["val_accuracy"] for h in result["history"]]
    best = accs.index(max(accs)) + 1
    assert best < 4 and accs[best - 1] > accs[-1]
    assert result["val_accuracy"] == max(accs)
    saved = load_file(str(tmp_path / "teacher" / "model.safetensors"))
    assert_same_weights(saved, weights_by_epoch(data, cfg, 0)[best])
    model, _ = load_model(tmp_path / "teacher")
    assert accuracy(model, open_source(data).read("val")) == max(accs)


def test_a_teacher_keeps_the_earliest_of_equal_validation_accuracies(tmp_path):
    # A learning rate too small to change any prediction: every epoch scores the same.
    data = str(blobs(tmp_path / "data"))
    cfg = TeacherConfig(teacher_epochs=3, teacher_lr=1e-6, batch_size=16)
    result = train_teacher(data, SPEC, cfg, 0, tmp_path / "teacher")
    assert len({h["val_accuracy"] for h in result["history"]}) == 1
    weights = weights_by_epoch(data, cfg, 0)
    saved = load_file(str(tmp_path / "teacher" / "model.safetensors"))
    assert_same_weights(saved, weights[1])
    assert any(not torch.equal(saved[k], weights[3][k]) for k in saved), "epochs differ"


def test_a_teacher_records_one_entry_per_epoch_and_saves_a_cpu_model_in_eval_mode(tmp_path):
    data = str(blobs(tmp_path / "data"))
    seen: list[dict[str, Any]] = []
    result = train_teacher(
        data, SPEC, TeacherConfig(teacher_epochs=3, teacher_lr=0.05, batch_size=16), 0,
        tmp_path / "teacher", {"index": 2}, seen.append,
    )
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    assert [s["epoch"] for s in seen] == [1, 2, 3]
    assert [s["teacher/val_accuracy"] for s in seen] == [
        h["val_accuracy"] for h in result["history"]
    ]
    assert {"loss", "hard_loss", "val_accuracy"} <= set(result["history"][0])
    model, spec = load_model(tmp_path / "teacher")
    assert (spec["role"], spec["index"]) == ("teacher", 2)
    assert result["params"] == sum(p.numel() for p in model.parameters())
    assert not model.training
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_a_teacher_learns_a_separable_problem(tmp_path):
    data = str(blobs(tmp_path / "data"))
    cfg = TeacherConfig(teacher_epochs=5, teacher_lr=0.05, batch_size=16)
    train_teacher(data, SPEC, cfg, 0, tmp_path / "teacher")
    model, _ = load_model(tmp_path / "teacher")
    assert accuracy(model, open_source(data).read("test")) >= 0.95


# ------------------------------------------------- checks the distill step makes up front

SHAPE = [1, 8, 8]


@pytest.fixture
def saved_teachers(tmp_path):
    meta = DatasetMeta("label", [f"f{i}" for i in range(64)], ["a", "b", "c"], SHAPE, "x",
                       {"train": 10, "val": 2, "test": 2}, "unit")
    folders = []
    for i, spec in enumerate(["cnn:channels=4-8,hidden=16", "mlp:hidden=8"]):
        torch.manual_seed(0)
        model = build_classifier(spec, SHAPE, 3, 64).eval()
        folders.append(str(save_model(model, tmp_path / f"t{i}", meta.classes,
                                      meta.feature_columns)))
    return folders, meta


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ensemble": "weighted_probs", "teacher_weights": [1.0]},
     "--teacher-weights: 1 weights for 2 teachers"),
    ({"teacher_mode": "online", "feature_weight": 1.0, "hint_teacher": 2},
     "--hint-teacher: 2 but there are 2 teachers"),
    ({"teacher_mode": "online", "feature_weight": 1.0, "feature_layers": ["net.1=net.9"]},
     "--feature-layers: no layer 'net.9' in the student (mlp:hidden=12)"),
    ({"teacher_mode": "online", "attention_weight": 1.0, "student": "transformer:dim=8,heads=2"},
     "--attention-weight: attention distillation needs transformer teacher and student; "
     "the teacher is cnn:channels=4-8,hidden=16"),
])
def test_distill_step_checks_teacher_dependent_settings_before_training(
    saved_teachers, kwargs, message
):
    folders, meta = saved_teachers
    cfg = DistillConfig(**{"student": "mlp:hidden=12", **kwargs})
    with pytest.raises(ConfigError) as err:
        check_teacher_settings(cfg, folders, meta)
    assert str(err.value).startswith(message)
    assert err.value.option == message.split(":")[0]


def test_distill_step_accepts_hints_that_resolve(saved_teachers):
    folders, meta = saved_teachers
    cfg = DistillConfig(student="mlp:hidden=12", teacher_mode="online", feature_weight=1.0,
                        feature_layers=["net.5=net.1"], ensemble="weighted_probs",
                        teacher_weights=[1.0, 2.0])
    check_teacher_settings(cfg, folders, meta)  # no ConfigError
    # It did resolve the layers: the same settings with one the teacher lacks are refused.
    cfg.feature_layers = ["net.50=net.1"]
    with pytest.raises(ConfigError, match=r"^--feature-layers: no layer 'net.50' in the teacher"):
        check_teacher_settings(cfg, folders, meta)
