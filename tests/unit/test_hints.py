"""Feature (FitNets) and attention (MiniLM) distillation around the models, without Ray:
layer pairing across families, pooling, the projections' place, the loop's hint losses,
and every mistake as a ConfigError naming its option."""

from __future__ import annotations

import pytest
import torch

from kdflow.config import DistillConfig
from kdflow.distill.driver import _batches, _build_role, _epoch, ensemble_targets, epoch_order
from kdflow.distill.hints import HintedStudent, Settings, TeacherTaps, make_plan, pool
from kdflow.distill.losses import hint_loss
from kdflow.errors import ConfigError
from kdflow.models.zoo import build_classifier

SHAPE = [1, 8, 8]


def model(spec: str, shape: list[int] = SHAPE):
    torch.manual_seed(0)
    return build_classifier(spec, shape, 3, 64).eval()


def features(weight: float = 1.0, layers: list[str] | None = None) -> Settings:
    return Settings(feature_weight=weight, feature_layers=layers or [])


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
    plan = make_plan(Settings(attention_weight=1.0), teacher, student)
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
        make_plan(Settings(attention_weight=1.0), model("cnn:channels=4"), model("transformer"))
    assert str(err.value) == (
        "--attention-weight: attention distillation needs transformer teacher and student; "
        "the teacher is cnn:channels=4"
    )
    assert err.value.option == "--attention-weight"


def test_attention_over_different_token_counts_is_refused():
    with pytest.raises(ConfigError, match="attends over 16 tokens, the student .* over 4"):
        make_plan(
            Settings(attention_weight=1.0),
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


def test_epoch_adds_the_weighted_hint_loss_and_trains_the_projections():
    teacher = model("cnn:channels=4-8,hidden=16")
    plan = make_plan(features(weight=0.5), teacher, model("mlp:hidden=12"))
    cfg = {"student": "mlp:hidden=12", "mean": [0.0] * 64, "std": [1.0] * 64,
           "lr": 1e-2, "epochs": 2}
    meta = type("Meta", (), {"input_shape": SHAPE, "n_classes": 3, "n_features": 64})()
    role = _build_role(cfg, meta, plan)  # type: ignore[arg-type]
    assert isinstance(role["model"], HintedStudent)
    assert role["aux"] is role["model"].projections
    before = [p.detach().clone() for p in role["aux"].parameters()]
    x, y = torch.randn(40, 64), torch.randint(0, 3, (40,))
    ensemble = {"top_k": 0, "n_classes": 3, "temperature": 2.0, "ensemble": "mean_probs",
                "weights": [1.0], "multi_teacher": "average"}
    batches = _batches(x, y, epoch_order(40, 40, 0), 8, torch.device("cpu"),
                       teachers=[teacher], ensemble=ensemble, taps=TeacherTaps(teacher, plan))
    loss, hard, soft_ce, seen, aux = _epoch(
        role["model"], batches, role["optimizer"], torch.device("cpu"), 2.0, 0.0, plan
    )
    assert seen == 40 and set(aux) == {"feature_loss"} and aux["feature_loss"] > 0
    # total = T²·H(p, q) + 0.5·hint, averaged over the same batches
    assert loss == pytest.approx(4.0 * soft_ce + 0.5 * aux["feature_loss"], rel=1e-4)
    after = list(role["aux"].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_separate_targets_report_each_teachers_entropy_not_the_mixtures():
    a = {"train": torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).half()}
    b = {"train": torch.tensor([[0.0, 0.0, 4.0], [0.0, 4.0, 0.0]]).half()}
    mixed = ensemble_targets([a, b], 3, 1.0, "weighted_probs", [0.25, 0.75])
    separate = ensemble_targets([a, b], 3, 1.0, "weighted_probs", [0.25, 0.75], separate=True)
    assert torch.equal(mixed.rows(), separate.rows())
    h_a = ensemble_targets([a], 3, 1.0, "mean_probs", [1.0]).entropy
    h_b = ensemble_targets([b], 3, 1.0, "mean_probs", [1.0]).entropy
    torch.testing.assert_close(separate.entropy, 0.25 * h_a + 0.75 * h_b)
    assert (mixed.entropy > separate.entropy).all()  # the mixture is flatter


# ------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"feature_weight": 1.0}, "--feature-weight: needs --teacher-mode online"),
    ({"attention_weight": 1.0, "student": "transformer"},
     "--attention-weight: needs --teacher-mode online"),
    ({"attention_weight": 1.0, "teacher_mode": "online"},
     "--attention-weight: attention distillation needs a transformer student, got 'mlp:hidden=12'"),
    ({"feature_layers": ["net.1=net.0"]},
     "--feature-layers: has no effect without --feature-weight > 0"),
    ({"feature_weight": 1.0, "teacher_mode": "online", "feature_layers": ["net.1"]},
     "--feature-layers: write TEACHER_LAYER=STUDENT_LAYER"),
    ({"feature_weight": -1.0}, "--feature-weight: must be >= 0"),
    ({"multi_teacher": "sum"}, "--multi-teacher: must be `average` or `separate`"),
    ({"multi_teacher": "separate", "ensemble": "mean_logits"},
     "--multi-teacher: `separate` sums per-teacher KLs"),
    ({"teacher_weights": [1.0, 2.0]}, "--teacher-weights: needs --ensemble weighted_probs"),
    ({"teacher_weights": [0.0], "ensemble": "weighted_probs"},
     "--teacher-weights: must be >= 0 and not all 0"),
    ({"hint_teacher": -1}, "--hint-teacher: must be >= 0"),
    ({"generations": 0}, "--generations: must be >= 1"),
])
def test_bad_distillation_method_settings_name_the_option(kwargs, message):
    with pytest.raises(ConfigError) as err:
        DistillConfig(**kwargs)
    assert str(err.value).startswith(message)
    assert err.value.option == message.split(":")[0]


def test_method_settings_that_fit_together_are_accepted():
    cfg = DistillConfig(
        student="transformer:dim=8,heads=2", teacher_mode="online", feature_weight=0.5,
        feature_layers=["net.3=penultimate"], attention_weight=1.0, multi_teacher="separate",
        ensemble="weighted_probs", teacher_weights=[2.0, 1.0], generations=3,
    )
    assert (cfg.feature_weight, cfg.generations) == (0.5, 3)


# ------------------------------------------------- checks the distill step makes up front


@pytest.fixture
def saved_teachers(tmp_path):
    from kdflow.data.prepared import DatasetMeta
    from kdflow.models.artifacts import save_model

    meta = DatasetMeta("label", [f"f{i}" for i in range(64)], ["a", "b", "c"], SHAPE, "x",
                       {"train": 10, "val": 2, "test": 2}, "unit")
    folders = []
    for i, spec in enumerate(["cnn:channels=4-8,hidden=16", "mlp:hidden=8"]):
        folders.append(str(save_model(model(spec), tmp_path / f"t{i}", meta.classes,
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
    from kdflow.distill.driver import check_teacher_settings

    folders, meta = saved_teachers
    cfg = DistillConfig(**{"student": "mlp:hidden=12", **kwargs})
    with pytest.raises(ConfigError) as err:
        check_teacher_settings(cfg, folders, meta)
    assert str(err.value).startswith(message)
    assert err.value.option == message.split(":")[0]


def test_distill_step_accepts_hints_that_resolve(saved_teachers):
    from kdflow.distill.driver import check_teacher_settings

    folders, meta = saved_teachers
    cfg = DistillConfig(student="mlp:hidden=12", teacher_mode="online", feature_weight=1.0,
                        feature_layers=["net.5=net.1"], ensemble="weighted_probs",
                        teacher_weights=[1.0, 2.0])
    check_teacher_settings(cfg, folders, meta)  # no ConfigError
    # It did resolve the layers: the same settings with one the teacher lacks are refused.
    cfg.feature_layers = ["net.50=net.1"]
    with pytest.raises(ConfigError, match=r"^--feature-layers: no layer 'net.50' in the teacher"):
        check_teacher_settings(cfg, folders, meta)
