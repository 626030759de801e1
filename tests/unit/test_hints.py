"""Feature (FitNets) and attention (MiniLM) distillation around the models, without Ray:
layer pairing across families, pooling, the projections' place, the loop's hint losses,
and every mistake in a hint's layers as a ConfigError naming its option. The hint settings'
own checks are DistillConfig's (tests/unit/test_distill_config.py)."""

from __future__ import annotations

import pytest
import torch

from kdflow.config import DistillConfig
from kdflow.data.sources import open_source
from kdflow.distill.hints import HintedStudent, TeacherTaps, feature_pairs, make_plan, pool
from kdflow.distill.loop import (
    WorkerJob,
    batches,
    build_roles,
    epoch_order,
    online_teachers,
    run_epoch,
)
from kdflow.distill.losses import hint_loss
from kdflow.distill.targets import Ensemble
from kdflow.distill.tasks import Classification
from kdflow.errors import ConfigError
from kdflow.models.artifacts import save_model
from kdflow.models.zoo import build_classifier

SHAPE = [1, 8, 8]


def model(spec: str, shape: list[int] = SHAPE):
    torch.manual_seed(0)
    return build_classifier(spec, shape, 3, 64).eval()


def features(weight: float = 1.0, layers: list[str] | None = None) -> DistillConfig:
    return DistillConfig(teacher_mode="online", feature_weight=weight, feature_layers=layers or [])


ATTENTION = DistillConfig(teacher_mode="online", attention_weight=1.0)


def test_hint_pairs_are_the_given_layers_or_the_penultimate_features():
    assert feature_pairs(DistillConfig()) == []
    assert feature_pairs(features()) == [("penultimate", "penultimate")]
    assert feature_pairs(features(layers=["net.5=net.1", "net.2=net.0"])) == [
        ("net.5", "net.1"), ("net.2", "net.0")
    ]


def test_cnn_teacher_guides_an_mlp_student_through_pooled_vectors():
    teacher, student = model("cnn:channels=4-8,hidden=16"), model("mlp:hidden=12-6")
    plan = make_plan(features(layers=["net.5=net.1"]), teacher, student)
    (pair,) = plan.pairs
    # cnn net.5 is the second block's BatchNorm: 8 channels of 4x4, pooled to 8 values.
    assert (pair.spatial, pair.student_width, pair.teacher_width) == (None, 12, 8)
    assert isinstance(pair.projection(), torch.nn.Linear)


def test_two_cnns_keep_the_smaller_map_and_project_with_a_1x1_convolution():
    teacher, student = model("cnn:channels=4-8,hidden=16"), model("resnet:depth=1,width=2")
    plan = make_plan(features(layers=["net.2=net.3"]), teacher, student)
    (pair,) = plan.pairs
    # teacher net.2: 4 × 8 × 8 (before pooling); student's first block: 2 × 8 × 8.
    assert (pair.spatial, pair.student_width, pair.teacher_width) == ((8, 8), 2, 4)
    assert isinstance(pair.projection(), torch.nn.Conv2d)


def test_default_pairs_the_penultimate_features_of_any_two_families():
    teacher = model("transformer:dim=16,heads=2,depth=1")
    student = model("cnn1d:channels=4,hidden=5", [64])
    (pair,) = make_plan(features(), teacher, student).pairs
    assert (pair.teacher_layer, pair.student_layer) == ("penultimate", "penultimate")
    assert (pair.student_width, pair.teacher_width) == (5, 16)


def test_pool_averages_positions_whatever_the_layout():
    x = torch.arange(24.0).reshape(2, 3, 4)
    assert pool(x, channels_last=True, spatial=None).shape == (2, 4)  # tokens B × L × D
    assert pool(x, channels_last=False, spatial=None).tolist() == [
        [1.5, 5.5, 9.5], [13.5, 17.5, 21.5]
    ]
    image = torch.ones(2, 3, 8, 8)
    assert pool(image, False, (4, 4)).shape == (2, 3, 4, 4)
    assert pool(image, False, None).shape == (2, 3)


def test_hinted_student_returns_projected_features_the_teachers_shape():
    teacher, student = model("cnn:channels=4-8,hidden=16"), model("mlp:hidden=12")
    plan = make_plan(features(layers=["net.5=net.1", "penultimate=penultimate"]), teacher, student)
    hinted = HintedStudent(student, plan)
    taps = TeacherTaps(teacher, plan)
    x = torch.randn(5, 64)
    with torch.no_grad():
        teacher(x)
    target = taps.take()
    logits, feats, maps = hinted(x)
    assert logits.shape == (5, 3) and maps == []
    assert [f.shape for f in feats] == [t.shape for t in target["features"]] == [(5, 8), (5, 16)]
    hint_loss(feats, target["features"]).backward()
    assert all(p.grad is not None for p in hinted.projections.parameters())


def test_projections_are_not_part_of_the_exported_student():
    teacher, student = model("cnn:channels=4-8,hidden=16"), model("mlp:hidden=12")
    hinted = HintedStudent(student, make_plan(features(), teacher, student))
    assert set(hinted.state_dict()) - {f"student.{k}" for k in student.state_dict()} == {
        "projections.0.weight", "projections.0.bias"
    }
    plain = build_classifier("mlp:hidden=12", SHAPE, 3, 64)
    plain.load_state_dict(student.state_dict(), strict=True)


def test_attention_pairs_student_layers_with_teacher_layers_uniformly():
    teacher = model("transformer:dim=16,heads=4,depth=4,patch=4")
    student = model("transformer:dim=8,heads=2,depth=2,patch=4")
    plan = make_plan(ATTENTION, teacher, student)
    assert plan.attention_map == [1, 3]
    taps, hinted = TeacherTaps(teacher, plan), HintedStudent(student, plan)
    x = torch.randn(3, 64)
    with torch.no_grad():
        teacher(x)
    target = taps.take()["attention"]
    _, _, maps = hinted(x)
    assert [m.shape for m in target] == [(3, 4, 4, 4)] * 2
    assert [m.shape for m in maps] == [(3, 2, 4, 4)] * 2


def test_attention_distillation_with_a_cnn_teacher_names_the_option():
    with pytest.raises(ConfigError) as err:
        make_plan(ATTENTION, model("cnn:channels=4"), model("transformer"))
    assert str(err.value) == (
        "--attention-weight: attention distillation needs transformer teacher and student; "
        "the teacher is cnn:channels=4"
    )
    assert err.value.option == "--attention-weight"


def test_attention_distillation_with_an_mlp_student_names_the_student():
    with pytest.raises(ConfigError) as err:
        make_plan(ATTENTION, model("transformer:dim=8,heads=2"), model("mlp:hidden=12"))
    assert str(err.value).endswith("the student is mlp:hidden=12")
    assert err.value.option == "--attention-weight"


def test_attention_over_different_token_counts_is_refused():
    with pytest.raises(ConfigError, match="attends over 16 tokens, the student .* over 4"):
        make_plan(
            ATTENTION,
            model("transformer:dim=8,heads=2,patch=2"),
            model("transformer:dim=8,heads=2,patch=4"),
        )


@pytest.mark.parametrize(("pair", "role", "name"), [
    ("net.99=net.1", "teacher", "net.99"), ("net.1=blocks.0", "student", "blocks.0")
])
def test_a_feature_layer_that_does_not_exist_names_the_option_and_the_model(pair, role, name):
    with pytest.raises(ConfigError) as err:
        make_plan(features(layers=[pair]), model("cnn:channels=4"), model("mlp:hidden=8"))
    assert str(err.value).startswith(f"--feature-layers: no layer '{name}' in the {role}")
    assert err.value.option == "--feature-layers"


# ------------------------------------------------------------------ the loop, without Ray


def test_an_epoch_adds_the_weighted_hint_loss_and_trains_the_projections(
    digits_dataset, tmp_path
):
    """The student learns from a CNN teacher online with hints; the baseline beside it
    has no plan and no hint loss."""
    source = open_source(str(digits_dataset))
    torch.manual_seed(0)
    teacher = build_classifier("cnn:channels=4-8,hidden=16", SHAPE, 10, 64)
    folder = save_model(teacher, tmp_path / "teacher", source.meta.classes,
                        source.meta.feature_columns)
    job = WorkerJob(
        cfg=DistillConfig(student="mlp:hidden=12", teacher_mode="online", feature_weight=0.5),
        dataset=str(digits_dataset),
        roles=["student", "baseline"],
        seed=0,
        run_dir="",
        ensemble=Ensemble(10, 2.0, "mean_probs", (1.0,), top_k=0, separate=False),
        teachers=[str(folder)],
    )
    task, cpu = Classification(), torch.device("cpu")
    teachers = online_teachers(job, source, task, cpu)
    assert teachers is not None and teachers.taps is not None
    student, baseline = build_roles(job, source, cpu, teachers)
    assert isinstance(student.model, HintedStudent)
    assert student.aux is student.model.projections
    assert baseline.plan is None and baseline.aux is None
    before = [p.detach().clone() for p in student.aux.parameters()]
    train = source.read("train", 0, 40)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    order = epoch_order(40, 40, 0)
    stats = run_epoch(student, batches(x, y, order, 8, cpu), task, 2.0, cpu, teachers)
    assert stats["rows"] == 40 and stats["feature_loss"] > 0 and "attention_loss" not in stats
    # alpha = 0: the loss is T²·KL(p_T ‖ q) + 0.5·hint, averaged over the same batches
    assert stats["loss"] == pytest.approx(
        4.0 * stats["soft_loss"] + 0.5 * stats["feature_loss"], rel=1e-4
    )
    after = list(student.aux.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    plain = run_epoch(baseline, batches(x, y, order, 8, cpu), task, 2.0, cpu, teachers)
    assert "feature_loss" not in plain and plain["soft_loss"] == 0.0
