"""kdflow.data.augment: seeded, vectorised augmentation of 0-255 image batches."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from kdflow.config import AUGMENTATIONS as SETTINGS_AUGMENTATIONS
from kdflow.data.augment import (
    AUGMENTATIONS,
    COLOR_RANGE,
    CROP_AREA,
    CROP_RATIO,
    MAX_ANGLE,
    Augmenter,
    ViewParams,
    affine_matrices,
    check_augment,
    color_jitter,
    draw_params,
    mixup,
    sampling_grid,
    warp,
)
from kdflow.errors import ConfigError

ALL = list(AUGMENTATIONS)


def images(n: int = 16, c: int = 1, h: int = 12, w: int = 12, seed: int = 0,
           dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Random pixels 0-255, as a loader would hand them over."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8).to(dtype)


def labels(n: int = 16, n_classes: int = 10) -> torch.Tensor:
    return torch.arange(n) % n_classes


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def neutral(n: int, **fields: Any) -> ViewParams:
    """The identity view, with some fields set."""
    return dataclasses.replace(ViewParams.neutral(n), **fields)


# --- names -------------------------------------------------------------------------------


def test_names_are_in_op_order_and_match_the_settings() -> None:
    assert ALL == ["crop", "flip", "rotate", "color", "mixup"]
    assert tuple(ALL) == SETTINGS_AUGMENTATIONS
    assert all(doc for doc in AUGMENTATIONS.values())


def test_check_augment_accepts_known_names() -> None:
    check_augment([])
    check_augment(ALL)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        check_augment(["crop", "cutout"], option="--student-augment")
    assert err.value.option == "--student-augment"
    message = str(err.value)
    assert "cutout" in message and message.startswith("--student-augment")
    assert all(name in message for name in ALL)


def test_repeated_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="twice: flip") as err:
        check_augment(["flip", "crop", "flip"])
    assert err.value.option == "--augment"


def test_augmenter_checks_its_names() -> None:
    with pytest.raises(ConfigError, match="cutout"):
        Augmenter(["cutout"], n_classes=10)
    assert Augmenter(["mixup", "crop"], 10).names == ("crop", "mixup")


# --- the whole augmenter -----------------------------------------------------------------


def test_same_seed_same_views_different_seed_different_views() -> None:
    x, y = images(), labels()
    aug = Augmenter(ALL, n_classes=10)
    a, ya = aug(x, y, gen(1))
    b, yb = aug(x, y, gen(1))
    c, yc = aug(x, y, gen(2))
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert not torch.allclose(a, c)
    assert not torch.allclose(ya, yc)


@pytest.mark.parametrize("names", [[name] for name in ALL] + [ALL])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_shapes_dtypes_and_range(names: list[str], channels: int, dtype: torch.dtype) -> None:
    x, y = images(c=channels, h=8, w=10, dtype=dtype), labels()
    aug = Augmenter(names, n_classes=10)
    out, targets = aug(x, y, gen(0))
    assert out.shape == x.shape and out.dtype == torch.float32 and out.device == x.device
    assert out.min() >= 0 and out.max() <= 255
    if aug.mixes_labels:
        assert targets.shape == (16, 10) and targets.dtype == torch.float32
    else:
        assert torch.equal(targets, y) and targets.dtype == torch.int64


def test_no_names_gives_float_pixels_and_the_same_labels() -> None:
    x, y = images(), labels()
    out, targets = Augmenter([], n_classes=10)(x, y, gen(0))
    assert out.dtype == torch.float32 and torch.equal(out, x.float())
    assert targets is y
    assert not Augmenter([], 10).mixes_labels


def test_the_input_batch_is_left_as_it_was() -> None:
    x = images(dtype=torch.float32)
    before = x.clone()
    Augmenter(ALL, 10)(x, labels(), gen(0))
    Augmenter(["color"], 10)(x, labels(), gen(0))
    assert torch.equal(x, before)


def test_turning_an_op_on_leaves_the_other_ops_draws_alone() -> None:
    x, y = images(), labels()
    _, mixed_alone = Augmenter(["mixup"], 10)(x, y, gen(5))
    _, mixed_with_all = Augmenter(ALL, 10)(x, y, gen(5))
    assert torch.equal(mixed_alone, mixed_with_all)


def test_bad_batches_are_refused() -> None:
    aug = Augmenter(["crop"], 10)
    with pytest.raises(ValueError, match="N × C × H × W"):
        aug(images()[:, 0], labels(), gen(0))
    with pytest.raises(ValueError, match="labels"):
        aug(images(), labels(8), gen(0))


# --- parameters --------------------------------------------------------------------------


def test_drawn_parameters_stay_in_their_ranges() -> None:
    p = draw_params(4000, gen(0))
    area, ratio = p.crop_w * p.crop_h, p.crop_w / p.crop_h
    assert area.min() >= CROP_AREA[0] - 1e-6 and area.max() <= CROP_AREA[1] + 1e-6
    assert ratio.min() >= CROP_RATIO[0] - 1e-6 and ratio.max() <= CROP_RATIO[1] + 1e-6
    # The crop never leaves the image, so only a rotation uncovers anything.
    assert (p.crop_x.abs() + p.crop_w).max() <= 1 + 1e-6
    assert (p.crop_y.abs() + p.crop_h).max() <= 1 + 1e-6
    assert p.angle.abs().max() <= MAX_ANGLE
    for factor in (p.brightness, p.contrast, p.saturation):
        assert COLOR_RANGE[0] <= factor.min() and factor.max() <= COLOR_RANGE[1]
    # Each parameter has a draw of its own: none is tied to another.
    per_sample = [p.crop_w, p.crop_x, p.crop_y, p.angle, p.brightness, p.contrast, p.saturation]
    corr = torch.corrcoef(torch.stack(per_sample)) - torch.eye(len(per_sample))
    assert corr.abs().max() < 0.3
    assert 0.45 < p.flip.float().mean() < 0.55
    assert 0 <= p.lam <= 1
    assert torch.equal(p.perm.sort().values, torch.arange(4000))


# --- geometry ----------------------------------------------------------------------------


def test_sampling_grid_equals_affine_grid() -> None:
    theta = torch.randn(5, 2, 3, generator=gen(0))
    for h, w in [(7, 11), (28, 28), (1, 4)]:
        expected = F.affine_grid(theta, [5, 3, h, w], align_corners=False)
        torch.testing.assert_close(sampling_grid(theta, h, w), expected, atol=1e-5, rtol=0)


def test_identity_parameters_give_the_identity_warp() -> None:
    x = images(n=4, c=3, h=6, w=10, dtype=torch.float32)
    theta = affine_matrices(ViewParams.neutral(4), 6, 10)
    assert torch.equal(theta, torch.eye(2, 3).expand(4, 2, 3))
    torch.testing.assert_close(warp(x, theta), x, atol=1e-3, rtol=0)


def test_crop_samples_its_box_resized_to_the_image() -> None:
    # Bilinear sampling of a ramp is exact, so the crop's values are known: the centred half
    # of an 8-wide ramp spans pixels 2..6, sampled at 1.75, 2.25, ... 5.25.
    ramp = torch.arange(8.0).mul(10).expand(1, 1, 8, 8)
    p = neutral(1, crop_w=torch.tensor([0.5]))
    out = warp(ramp, affine_matrices(p, 8, 8))
    expected = (1.75 + 0.5 * torch.arange(8.0)) * 10
    torch.testing.assert_close(out[0, 0], expected.expand(8, 8), atol=1e-3, rtol=0)


def test_crop_at_the_border_keeps_the_edge_pixels_bright() -> None:
    # A crop in the top-left corner, resized up, samples half a pixel past the image's edge:
    # clamping to the border keeps that pixel's value (zero padding would darken it).
    x = torch.full((1, 1, 8, 8), 200.0)
    p = neutral(1, crop_w=torch.tensor([0.5]), crop_h=torch.tensor([0.5]),
                crop_x=torch.tensor([-0.5]), crop_y=torch.tensor([-0.5]))
    torch.testing.assert_close(warp(x, affine_matrices(p, 8, 8)), x)


def test_rotate_by_zero_is_the_identity_and_by_90_is_rot90() -> None:
    x = images(n=3, c=1, h=9, w=9, dtype=torch.float32)
    zero = affine_matrices(neutral(3), 9, 9)
    torch.testing.assert_close(warp(x, zero), x, atol=1e-3, rtol=0)
    quarter = affine_matrices(neutral(3, angle=torch.full((3,), 90.0)), 9, 9)
    # Positive angles turn the content counter-clockwise as displayed, as rot90 does.
    torch.testing.assert_close(warp(x, quarter), torch.rot90(x, 1, dims=(-2, -1)),
                               atol=1e-3, rtol=0)


def test_rotation_turns_pixels_not_the_unit_square() -> None:
    # On a 9 × 15 image a pixel 3 columns right of the centre goes 3 rows up under a quarter
    # turn; rotating the [-1, 1] square instead would move it 1.8 rows.
    x = torch.zeros(1, 1, 9, 15)
    x[0, 0, 4, 10] = 255.0
    out = warp(x, affine_matrices(neutral(1, angle=torch.tensor([90.0])), 9, 15))
    expected = torch.zeros_like(x)
    expected[0, 0, 1, 7] = 255.0
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=0)


def test_rotation_blacks_out_the_uncovered_corners() -> None:
    x = torch.full((1, 1, 16, 16), 255.0)
    out = warp(x, affine_matrices(neutral(1, angle=torch.tensor([15.0])), 16, 16))
    assert out[0, 0, 0, 0] == 0 and out[0, 0, -1, -1] == 0
    # The centre stays covered (up to bilinear rounding).
    torch.testing.assert_close(out[0, 0, 4:12, 4:12], torch.full((8, 8), 255.0))


def test_flip_alone_mirrors_some_rows_exactly() -> None:
    x, y = images(n=32), labels(32)
    out, _ = Augmenter(["flip"], 10)(x, y, gen(0))
    flipped = [torch.equal(o, r.float().flip(-1)) for o, r in zip(out, x, strict=True)]
    kept = [torch.equal(o, r.float()) for o, r in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)


def test_flip_inside_the_warp_mirrors_the_image() -> None:
    x = images(n=2, c=3, h=5, w=7, dtype=torch.float32)
    theta = affine_matrices(neutral(2, flip=torch.tensor([True, False])), 5, 7)
    out = warp(x, theta)
    torch.testing.assert_close(out[0], x[0].flip(-1), atol=1e-3, rtol=0)
    torch.testing.assert_close(out[1], x[1], atol=1e-3, rtol=0)


# --- colour ------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_brightness_scales_a_constant_image(channels: int) -> None:
    x = torch.full((3, channels, 4, 4), 100.0)
    factors = torch.tensor([0.6, 1.0, 3.0])
    out = color_jitter(x, factors, torch.tensor([0.5, 1.4, 1.0]), torch.tensor([0.0, 2.0, 1.0]))
    # Contrast and saturation leave a flat grey image as it is; 300 clips to 255.
    expected = torch.tensor([60.0, 100.0, 255.0]).view(3, 1, 1, 1).expand_as(x)
    torch.testing.assert_close(out, expected)


def test_color_through_the_augmenter_keeps_flat_images_flat() -> None:
    x = torch.full((64, 1, 6, 6), 100, dtype=torch.uint8)
    out, _ = Augmenter(["color"], 10)(x, labels(64), gen(3))
    per_row = out.flatten(1)
    assert torch.equal(per_row.amin(1), per_row.amax(1))
    assert per_row.min() >= 100 * COLOR_RANGE[0] - 1e-3
    assert per_row.max() <= 100 * COLOR_RANGE[1] + 1e-3
    assert per_row[:, 0].unique().numel() > 1


def test_contrast_blends_with_the_mean_grey_level() -> None:
    x = torch.tensor([50.0, 150.0]).repeat(8).view(1, 1, 4, 4)
    one = torch.ones(1)
    torch.testing.assert_close(color_jitter(x, one, torch.zeros(1), one), torch.full_like(x, 100))
    torch.testing.assert_close(color_jitter(x, one, torch.full((1,), 1.5), one),
                               100 + (x - 100) * 1.5)


def test_saturation_zero_gives_greyscale() -> None:
    x = images(n=2, c=3, dtype=torch.float32)
    one = torch.ones(2)
    out = color_jitter(x, one, one, torch.zeros(2))
    grey = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(out, grey.expand_as(x), atol=1e-3, rtol=0)


def test_color_refuses_other_channel_counts() -> None:
    with pytest.raises(ValueError, match="1 or 3 channels"):
        Augmenter(["color"], 10)(images(c=2), labels(), gen(0))


# --- mixup -------------------------------------------------------------------------------


def test_mixup_blends_pairs_of_images_and_their_labels() -> None:
    a, b = torch.full((1, 3, 2, 2), 200.0), torch.full((1, 3, 2, 2), 20.0)
    out, targets = mixup(torch.cat([a, b]), torch.tensor([1, 3]), 0.25, torch.tensor([1, 0]), 4)
    torch.testing.assert_close(out[0], (0.25 * a + 0.75 * b)[0])
    torch.testing.assert_close(out[1], (0.25 * b + 0.75 * a)[0])
    torch.testing.assert_close(targets, torch.tensor([[0, 0.25, 0, 0.75], [0, 0.75, 0, 0.25]]))


def test_mixup_labels_are_probabilities_cross_entropy_takes() -> None:
    aug = Augmenter(["mixup"], n_classes=10)
    assert aug.mixes_labels
    x, y = images(), labels()
    out, targets = aug(x, y, gen(0))
    assert targets.min() >= 0
    torch.testing.assert_close(targets.sum(1), torch.ones(16))
    loss = F.cross_entropy(torch.zeros(16, 10), targets)
    assert math.isclose(loss.item(), math.log(10), rel_tol=1e-5)


# --- devices -----------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_views_on_cpu_and_gpu() -> None:
    x, y = images(n=64, c=3, h=32, w=32), labels(64)
    aug = Augmenter(ALL, 10)
    cpu, cpu_targets = aug(x, y, gen(7))
    gpu, gpu_targets = aug(x.cuda(), y.cuda(), gen(7))
    assert gpu.is_cuda and gpu_targets.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=0.05, rtol=0)
    torch.testing.assert_close(gpu_targets.cpu(), cpu_targets)
