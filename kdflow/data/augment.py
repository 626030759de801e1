"""Train-time augmentation of image batches, in pure torch (no torchvision).

Design:

- It works on decoded batches (N × C × H × W, pixels 0-255, uint8 or float32) on the
  loop's device, after the batch left the loader, so the prepared pixels stay as decoded
  and one prepared dataset serves augmented and plain runs alike.
- The output stays on the 0-255 scale, as float32 clamped to [0, 255]: the models scale
  and normalise inside themselves, and the exported model takes the same pixels.
- Randomness comes only from the caller's CPU `torch.Generator`, seeded per epoch/step by
  the caller. Every parameter is drawn on the CPU and then moved to the batch's device, so
  one seed gives the same views on CPU and GPU, and every model fed from an identically
  seeded generator (the student, the no-KD baseline, the online teachers) sees the very
  same views. That is what function matching needs (Beyer et al., CVPR 2022, "Knowledge
  distillation: A good teacher is patient and consistent"): the teachers label the views
  the student sees, which is why cached teacher logits and augmentation do not mix.
- The parameters of all five ops are drawn on every call, in the fixed order crop, flip,
  rotate, color, mixup, whichever ops are on: turning one op on or off never changes the
  draws of another, so ablations compare like with like.
- Per-sample parameters, vectorised over the batch: crop, flip and rotate are one affine
  warp (an `affine_grid`-equal sampling grid + bilinear `grid_sample`), colour and mixup a
  few broadcast operations. No Python loop over rows: it runs on every training step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdflow.errors import ConfigError

AUGMENTATIONS: dict[str, str] = {
    "crop": "random resized crop: 60-100% of the area, aspect ratio 3/4-4/3, back to H × W",
    "flip": "horizontal flip with probability 0.5 (wrong for digits and text-like images)",
    "rotate": "rotation by a uniform angle within ±15 degrees, uncovered corners black",
    "color": "brightness and contrast jitter (×0.6-1.4), saturation too for RGB images",
    "mixup": "pairs of images blended with a uniform weight, their labels too (soft targets)",
}
"""The names `--augment` takes, in the fixed order the ops run, each with a one-line doc."""

CROP_AREA = (0.6, 1.0)
"""Fraction of the image's area a crop keeps (Inception's is 0.08-1: too harsh here)."""
CROP_RATIO = (3 / 4, 4 / 3)
"""Aspect ratio of a crop, relative to the image's own (the same as pixels for a square)."""
FLIP_P = 0.5
MAX_ANGLE = 15.0
"""Degrees, either way."""
COLOR_RANGE = (0.6, 1.4)
"""Range of the brightness, contrast and saturation factors (1 leaves the image as it was)."""
MIXUP_ALPHA = 1.0
"""Beta(alpha, alpha) of the mixup weight. At 1 it is Uniform(0, 1), drawn with `torch.rand`
(torch's Beta and Gamma samplers take no generator)."""

_GRAY = (0.299, 0.587, 0.114)
"""ITU-R 601 luma weights, as PIL and torchvision use them for contrast and saturation."""
_N_UNIFORMS = 9
"""Per-sample uniforms drawn each call: crop 4, flip 1, rotate 1, color 3."""
_FIELDS = {
    "crop": ("crop_w", "crop_h", "crop_x", "crop_y"),
    "flip": ("flip",),
    "rotate": ("angle",),
    "color": ("brightness", "contrast", "saturation"),
    "mixup": ("lam", "perm"),
}
"""The ViewParams fields each op reads: an op that is off gets them at their neutral value."""


def check_augment(names: Sequence[str], option: str = "--augment") -> None:
    """Refuse an unknown or repeated augmentation name, naming the known ones."""
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise ConfigError(
            f"{option}: unknown augmentation {', '.join(unknown)}; "
            f"known: {', '.join(AUGMENTATIONS)}",
            option=option,
        )
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        raise ConfigError(
            f"{option}: names an augmentation twice: {', '.join(repeated)} "
            f"(known: {', '.join(AUGMENTATIONS)})",
            option=option,
        )


@dataclass(frozen=True)
class ViewParams:
    """One batch's random parameters, all on the CPU; per-sample tensors have length N.

    A field left at its neutral value (`neutral`) leaves its op out: crop_w = crop_h = 1 and
    crop_x = crop_y = 0 keep the whole image, angle 0 no rotation, factors 1 no colour change.
    """

    crop_w: torch.Tensor
    """Width of the crop as a fraction of the image's width, in (0, 1]."""
    crop_h: torch.Tensor
    crop_x: torch.Tensor
    """Centre of the crop, in grid_sample's normalised coordinates ([-1, 1] spans the image)."""
    crop_y: torch.Tensor
    flip: torch.Tensor
    """bool: mirror this row left to right."""
    angle: torch.Tensor
    """Degrees; positive turns the content counter-clockwise as displayed."""
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    lam: float
    """Mixup weight of each row itself; 1 - lam goes to its partner row perm[i]."""
    perm: torch.Tensor
    """int64 permutation of the rows: each row's mixup partner."""

    @classmethod
    def neutral(cls, n: int) -> ViewParams:
        """Parameters that leave every op out: the identity view."""
        ones, zeros = torch.ones(n), torch.zeros(n)
        return cls(ones, ones, zeros, zeros, torch.zeros(n, dtype=torch.bool), zeros,
                   ones, ones, ones, 1.0, torch.arange(n))


def draw_params(n: int, generator: torch.Generator) -> ViewParams:
    """Draw every op's parameters for a batch of n from `generator`, always in one order.

    Crop follows the random-resized crop of Szegedy et al. 2015 ("Going deeper with
    convolutions"; timm's RandomResizedCrop): area uniform, log aspect ratio uniform. It is
    vectorised instead of retried: a side that would exceed the image is clamped to it, which
    keeps the area within CROP_AREA and moves the ratio towards 1.
    """
    u = torch.rand(n, _N_UNIFORMS, generator=generator)
    lam = _uniform(torch.rand(1, generator=generator), 0.0, 1.0)  # Beta(1, 1) = U(0, 1)
    perm = torch.randperm(n, generator=generator)
    area = _uniform(u[:, 0], *CROP_AREA)
    ratio = torch.exp(_uniform(u[:, 1], math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
    crop_w = torch.sqrt(area * ratio).clamp_(max=1.0)
    crop_h = torch.sqrt(area / ratio).clamp_(max=1.0)
    return ViewParams(
        crop_w=crop_w,
        crop_h=crop_h,
        # The centre ranges so that the crop stays inside the image: ±(1 - side).
        crop_x=(1 - crop_w) * _uniform(u[:, 2], -1.0, 1.0),
        crop_y=(1 - crop_h) * _uniform(u[:, 3], -1.0, 1.0),
        flip=u[:, 4] < FLIP_P,
        angle=_uniform(u[:, 5], -MAX_ANGLE, MAX_ANGLE),
        brightness=_uniform(u[:, 6], *COLOR_RANGE),
        contrast=_uniform(u[:, 7], *COLOR_RANGE),
        saturation=_uniform(u[:, 8], *COLOR_RANGE),
        lam=float(lam.item()),
        perm=perm,
    )


def _uniform(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Map uniforms on [0, 1) onto [low, high)."""
    return low + (high - low) * u


def affine_matrices(params: ViewParams, height: int, width: int) -> torch.Tensor:
    """The N × 2 × 3 `affine_grid` matrices of crop, rotate and flip in one warp.

    Each maps an output point to where it samples the input, in normalised coordinates:
    theta = Crop · Rotate · Flip. The rotation is conjugated by the image's aspect so that
    it turns pixels rather than the [-1, 1] square (which would shear a non-square image).
    Built on the CPU in float32, so every device warps with the same numbers.
    """
    rad = torch.deg2rad(params.angle)
    cos, sin = torch.cos(rad), torch.sin(rad)
    sign = 1.0 - 2.0 * params.flip.float()  # -1 mirrors x
    w, h = params.crop_w, params.crop_h
    row_x = torch.stack([w * cos * sign, -w * sin * (height / width), params.crop_x], dim=-1)
    row_y = torch.stack([h * sin * (width / height) * sign, h * cos, params.crop_y], dim=-1)
    return torch.stack([row_x, row_y], dim=1).float()


def sampling_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`F.affine_grid(theta, (N, C, H, W), align_corners=False)`, built separably.

    Returned as an N × H × W × 2 view (a permuted N × 2 × H × W tensor, which grid_sample
    reads as it is). An affine map of a pixel grid is a sum of a term along x and one along
    y, so two small products and one broadcast add make it: about 13 times faster on the CPU
    than affine_grid, which multiplies a full N × H·W × 3 base grid. Equal to it up to
    float rounding (the unit tests check).
    """
    # Pixel centres in normalised coordinates, as align_corners=False places them.
    xs = torch.linspace(-1 + 1 / width, 1 - 1 / width, width, device=theta.device)
    ys = torch.linspace(-1 + 1 / height, 1 - 1 / height, height, device=theta.device)
    t = theta.unsqueeze(-1)  # N × 2 × 3 × 1: rows (x, y) × (coefficient of x, of y, offset)
    along_x = t[:, :, 0] * xs  # N × 2 × W
    along_y = t[:, :, 1] * ys + t[:, :, 2]  # N × 2 × H
    planes = along_x.unsqueeze(2) + along_y.unsqueeze(3)  # N × 2 × H × W
    return planes.permute(0, 2, 3, 1)


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample float images N × C × H × W through the affine matrices `theta` (bilinear).

    Sampling clamps to the image's edge pixels ("border") and then blacks out (zeros) every
    output pixel whose source lies off the image. So a crop resized up uses the image's own
    edge pixels, not a blend with black as plain zero padding would give at the border, and
    the corners a rotation uncovers are black, as torchvision's RandomRotation fills them
    (reflection would mirror strokes into the corners of small digits).
    """
    grid = sampling_grid(theta, x.shape[2], x.shape[3])
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    off_image = grid.abs().amax(dim=-1).unsqueeze(1) > 1.0  # N × 1 × H × W
    return out.masked_fill_(off_image, 0.0)


def flip_rows(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left to right the rows of x where `flip` (bool N, on x's device) is true.

    Exact (no resampling): used when flip is the only geometric op, so no warp runs.
    """
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def color_jitter(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                 saturation: torch.Tensor) -> torch.Tensor:
    """Brightness, then contrast, then (3 channels only) saturation, each clamped to 0-255.

    The factors (N, on x's device) blend each image with black, its mean grey level and its
    own greyscale, as PIL's ImageEnhance and torchvision's ColorJitter do; the order is fixed
    rather than shuffled, so the views stay simple to reason about. A new tensor is returned.
    """
    if x.shape[1] not in (1, 3):
        raise ValueError(f"color augmentation needs 1 or 3 channels, got {x.shape[1]}")
    out = (x * brightness.view(-1, 1, 1, 1)).clamp_(0.0, 255.0)
    mean = _gray(out).mean(dim=(1, 2, 3), keepdim=True)
    out = out.sub_(mean).mul_(contrast.view(-1, 1, 1, 1)).add_(mean).clamp_(0.0, 255.0)
    if out.shape[1] == 3:
        gray = _gray(out)
        out = out.sub_(gray).mul_(saturation.view(-1, 1, 1, 1)).add_(gray).clamp_(0.0, 255.0)
    return out


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Greyscale N × 1 × H × W of 1- or 3-channel images."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def mixup(x: torch.Tensor, y: torch.Tensor, lam: float, perm: torch.Tensor,
          n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al., ICLR 2018): blend each row with row perm[i], labels likewise.

    Images become lam·x + (1 - lam)·x[perm]; int64 labels become the float32 class
    probabilities lam·onehot(y) + (1 - lam)·onehot(y[perm]), N × n_classes, which
    `cross_entropy` takes as targets directly. Function matching (Beyer et al. 2022) relies
    on strong mixup: there the teachers label each blended image itself, which says more
    than the blend of two labels does.
    """
    perm_x = perm.to(x.device)
    images = torch.lerp(x[perm_x], x, lam)
    onehot = F.one_hot(y, n_classes).float()
    targets = torch.lerp(onehot[perm.to(y.device)], onehot, lam)
    return images, targets


class Augmenter:
    """The train-time augmentations named, applied in the fixed order of AUGMENTATIONS.

    Call it once per training batch with a CPU generator seeded for that epoch/step; the same
    seed gives the same views on every device and to every caller.
    """

    def __init__(self, names: Sequence[str], n_classes: int) -> None:
        """Check `names` (ConfigError, see check_augment) and keep them in the fixed order."""
        check_augment(names)
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        self.names = tuple(name for name in AUGMENTATIONS if name in names)
        self.n_classes = n_classes

    @property
    def mixes_labels(self) -> bool:
        """True when mixup is on: labels come back as N × n_classes float probabilities."""
        return "mixup" in self.names

    def __repr__(self) -> str:
        return f"Augmenter({list(self.names)!r}, n_classes={self.n_classes})"

    def __call__(self, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch: float32 images N × C × H × W on x's device, 0-255, and labels.

        The labels come back unchanged (int64 N) unless mixup is on; then they are float32
        N × n_classes class probabilities. With no names, x comes back as float32, y as is.
        """
        _check_batch(x, y, generator)
        x = x.float()
        if not self.names:
            return x, y
        params = self._params(x.shape[0], generator)
        x = self._geometry(x, params)
        if "color" in self.names:
            x = color_jitter(x, *(_to(t, x) for t in
                                  (params.brightness, params.contrast, params.saturation)))
        if self.mixes_labels:
            x, y = mixup(x, y, params.lam, params.perm, self.n_classes)
        # Bilinear sampling and lerp are convex blends, but rounding may step past 255.
        return x.clamp_(0.0, 255.0), y

    def _params(self, n: int, generator: torch.Generator) -> ViewParams:
        """Draw all ops' parameters, then neutralise the ops that are off."""
        params = draw_params(n, generator)
        neutral = ViewParams.neutral(n)
        off = {field: getattr(neutral, field) for name, fields in _FIELDS.items()
               if name not in self.names for field in fields}
        return dataclasses.replace(params, **off)

    def _geometry(self, x: torch.Tensor, params: ViewParams) -> torch.Tensor:
        """One warp for crop/rotate (flip folded in); an exact flip when it is alone."""
        if "crop" in self.names or "rotate" in self.names:
            theta = affine_matrices(params, x.shape[2], x.shape[3])
            return warp(x, _to(theta, x))
        if "flip" in self.names:
            return flip_rows(x, params.flip.to(x.device))
        return x


def _to(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A float CPU parameter moved onto x's device, in x's dtype."""
    return t.to(device=x.device, dtype=x.dtype)


def _check_batch(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> None:
    """Refuse a batch of the wrong shape, or a generator that is not on the CPU."""
    if x.ndim != 4:
        raise ValueError(f"images must be N × C × H × W, got shape {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if generator.device.type != "cpu":
        raise ValueError("the generator must be a CPU torch.Generator (parameters are drawn "
                         f"on the CPU for every device alike), got one on {generator.device}")
