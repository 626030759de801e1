"""DistillConfig's own checks (`kdflow.config.settings`): settings of the distill step that
do not fit together are refused before anything runs, naming the option. The checks that
need the teachers are `kdflow.distill.driver.check_teacher_settings` (tests/unit/test_driver.py)."""

from __future__ import annotations

import pytest

from kdflow.config import DistillConfig
from kdflow.errors import ConfigError


def test_augment_noise_needs_online_teachers():
    with pytest.raises(ConfigError, match="--augment-noise: .*needs --teacher-mode online"):
        DistillConfig(augment_noise=0.1)
    with pytest.raises(ConfigError, match="--augment-noise: must be >= 0"):
        DistillConfig(augment_noise=-0.1, teacher_mode="online")
    assert DistillConfig(augment_noise=0.1, teacher_mode="online").augment_noise == 0.1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ensemble": "median"},
         "--ensemble: must be one of mean_probs, weighted_probs, mean_logits, got 'median'"),
        ({"teacher_mode": "sometimes"}, "--teacher-mode: must be `offline` or `online`"),
        ({"top_k": -1}, "--top-k: must be >= 0"),
        ({"top_k": 5, "ensemble": "mean_logits"},
         "--top-k: cannot be used with --ensemble mean_logits"),
        ({"storage_path": "gs://bucket/kd"}, "--storage-path: must be a folder or s3://"),
        ({"ray_address": "127.0.0.1:8265", "storage_path": "/shared"},
         "--ray-address: must be the Ray dashboard's http://HOST:8265"),
        ({"ray_address": "http://head:8265"}, "--storage-path: --ray-address needs a"),
    ],
)
def test_distill_config_refuses_bad_ray_settings_naming_the_option(kwargs, message):
    with pytest.raises(ConfigError) as info:
        DistillConfig(**kwargs)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"feature_weight": 1.0}, "--feature-weight: needs --teacher-mode online"),
    ({"attention_weight": 1.0, "student": "transformer"},
     "--attention-weight: needs --teacher-mode online"),
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
    assert cfg.uses_hints and not DistillConfig().uses_hints


def test_augment_takes_known_names_once_and_needs_online_teachers():
    from kdflow.config import AUGMENTATIONS
    from kdflow.data.augment import AUGMENTATIONS as IMPLEMENTED

    assert tuple(IMPLEMENTED) == AUGMENTATIONS, "the settings' names are the ones implemented"
    assert DistillConfig(augment=["crop", "mixup"], teacher_mode="online").augment == [
        "crop", "mixup"]
    with pytest.raises(ConfigError, match="--augment: augments image data.*--teacher-mode online"):
        DistillConfig(augment=["crop"])
    with pytest.raises(ConfigError, match="--augment: unknown augmentation spin; known: crop"):
        DistillConfig(augment=["spin"], teacher_mode="online")
    with pytest.raises(ConfigError, match="--augment: names an augmentation twice"):
        DistillConfig(augment=["flip", "flip"], teacher_mode="online")


def test_teachers_may_train_on_augmented_views():
    from kdflow.config import TeacherConfig
    from kdflow.distill.driver import teacher_training

    cfg = teacher_training(TeacherConfig(teacher_augment=["crop", "rotate"]), "cnn")
    assert (cfg.augment, cfg.teacher_mode, cfg.alpha) == (["crop", "rotate"], "online", 1.0)
    assert teacher_training(TeacherConfig(), "cnn").augment == []
    with pytest.raises(ConfigError, match="--teacher-augment: unknown augmentation spin"):
        TeacherConfig(teacher_augment=["spin"])
