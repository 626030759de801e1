"""One knowledge-distillation step, top to bottom, in the manner of torchtune's KD recipe
(`recipes/knowledge_distillation_single_device.py`, `_loss_step`):

1. the teachers' targets: cached with the batch (offline), or computed now under
   `torch.no_grad()` (online), rounded as the cache rounds them;
2. the student's forward pass (bf16 autocast on a GPU);
3. the loss, composed from named parts (`LossParts`): the task's KD loss, then the hint
   losses a plan asks for;
4. backward and the optimizer's step.

Steps 2 and 3 are one function, `forward_loss`. Under FSDP (`kdflow.distill.sharding`)
they run inside the wrapped module's forward (`StepLoss`): a causal LM's chunked loss
applies the LM head, whose weight FSDP gathers only during that forward.

One step serves every role the loop trains: the distilled student, the no-distillation
baseline (the same step without targets) and the teachers themselves (hard labels, best
validation epoch kept).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdflow.distill.hints import HintedStudent, Plan, TeacherTaps
from kdflow.distill.losses import LossParts, attention_loss, cosine_hidden_loss, hint_loss
from kdflow.distill.targets import Ensemble, SoftTargets
from kdflow.distill.tasks import Task


@dataclass
class Role:
    """One model the loop trains, with its optimizer and schedule."""

    name: str
    """`student`, `baseline` or `teacher`: the checkpoint's key prefix and the report's."""
    model: nn.Module
    """What trains: the classifier, or a `HintedStudent` around it (or its DDP wrapper)."""
    classifier: nn.Module
    """What is validated, checkpointed and saved (never the hint projections)."""
    optimizer: torch.optim.Optimizer
    scheduler: Any
    kd: bool
    """Learns from the teachers' targets (the student); otherwise from labels alone."""
    alpha: float
    """Weight of the label loss (1 for roles without teachers)."""
    plan: Plan | None = None
    keep_best: bool = False
    """Hand back the best validation epoch's weights (teachers) rather than the last."""
    best_acc: float = -1.0
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    sharded: Any = field(default=None, repr=False)
    """Under FSDP: the role's `kdflow.distill.sharding.Sharded` (its parameter names, rank
    0's full copy for validation, the state last gathered for the checkpoint); else None."""

    @property
    def aux(self) -> nn.Module | None:
        """The hint projections, trained and checkpointed with the role, never exported."""
        inner = getattr(self.model, "module", self.model)  # DDP wraps the trained module
        return inner.projections if isinstance(inner, HintedStudent) else None

    @property
    def scored(self) -> nn.Module:
        """What validation runs: the classifier, or under FSDP rank 0's full copy of it."""
        return self.classifier if self.sharded is None else self.sharded.copy


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    soft: torch.Tensor | None = None
    """The ensemble's cached soft targets of these rows (offline KD), N × C."""


@dataclass
class OnlineTeachers:
    """Teachers that run on every batch (online KD: augmentation, hints)."""

    models: list[nn.Module]
    ensemble: Ensemble
    task: Task
    taps: TeacherTaps | None = None
    """Hooks on the hint teacher: its features and attention maps of the same pass."""

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> SoftTargets:
        # The cache's rounding (float16, top-k) applies here too, so offline and online
        # runs on the same rows train the same student.
        parts = [self.task.teacher_parts(t, x, self.ensemble.top_k) for t in self.models]
        return self.task.targets(parts, self.ensemble)


@dataclass
class StepOutput:
    parts: LossParts
    logits: torch.Tensor
    """The student's logits, detached (pure KD's reported label loss uses them)."""
    entropy: torch.Tensor | None
    """Σ H(p_T) of the batch's online targets (offline: counted once per epoch)."""


def kd_step(
    role: Role,
    batch: Batch,
    task: Task,
    temperature: float,
    device: torch.device,
    teachers: OnlineTeachers | None = None,
    accumulate: int = 1,
    update: bool = True,
) -> StepOutput:
    """One batch of `role`: forward, loss, backward, and with `update` the optimizer's
    step. Gradient accumulation: the loss is divided by `accumulate`, and the caller sets
    `update` on every `accumulate`-th batch (and the epoch's last), so one update follows
    the mean gradient of `accumulate` batches, as one batch that many times larger would;
    under DDP the gradients are all-reduced on that batch alone (`no_sync` before it)."""
    # 1. The teachers' targets: cached, or online under no_grad.
    soft, entropy, taps = (batch.soft if role.kd else None), None, None
    if role.kd and teachers is not None:
        online = teachers.targets(batch.x)
        soft = online.rows()
        entropy = online.entropy.sum() if online.entropy is not None else None
        taps = teachers.taps.take() if teachers.taps is not None else None

    # 2-3. The student's forward pass and the loss, by named parts.
    if role.sharded is not None:  # FSDP: inside the wrapped module's forward (StepLoss)
        parts, logits = role.model(batch.x, batch.y, soft, taps)
    else:
        parts, logits = forward_loss(
            role.model, role.classifier, role.plan, task, batch, soft, taps, temperature,
            role.alpha, bf16=device.type == "cuda",
        )

    # 4. Backward, and the step on the last batch of an accumulation.
    no_sync = getattr(role.model, "no_sync", None)  # DDP's; a local module has none
    with no_sync() if not update and callable(no_sync) else contextlib.nullcontext():
        (parts.total / accumulate if accumulate > 1 else parts.total).backward()
    if update:
        apply_update(role)
    return StepOutput(parts, logits.detach(), entropy)


def forward_loss(
    model: nn.Module,
    classifier: nn.Module,
    plan: Plan | None,
    task: Task,
    batch: Batch,
    soft: torch.Tensor | None,
    taps: dict[str, list[torch.Tensor]] | None,
    temperature: float,
    alpha: float,
    bf16: bool,
) -> tuple[LossParts, torch.Tensor]:
    """The student's forward pass (with `bf16`, under bf16 autocast: on a GPU) and its
    loss parts, with the logits in float32."""
    if bf16:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(batch.x)
    else:
        out = model(batch.x)
    logits, features, maps = out if isinstance(out, tuple) else (out, [], [])
    logits = logits.float()
    parts = task.loss(logits, batch.y, soft, temperature, alpha, classifier)
    if plan is not None:
        parts = with_hints(parts, plan, features, maps, taps)
    return parts, logits


class StepLoss(nn.Module):
    """A role's model with its loss in `forward`, for FSDP to wrap: `forward(x, y, soft,
    taps)` returns `forward_loss`'s (parts, logits). FSDP gathers a unit's parameters only
    around its forward, so a loss that reads a weight (a causal LM's head, applied chunk by
    chunk) must run inside it."""

    def __init__(self, role: Role, task: Task, temperature: float) -> None:
        super().__init__()
        self.net = role.model
        # Plain attributes, not submodules: the classifier is inside `net`, and a second
        # registration would give its parameters two names.
        self.__dict__["classifier"] = role.classifier
        self.plan, self.task = role.plan, task
        self.temperature, self.alpha = temperature, role.alpha

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        soft: torch.Tensor | None,
        taps: dict[str, list[torch.Tensor]] | None,
    ) -> tuple[LossParts, torch.Tensor]:
        return forward_loss(
            self.net, self.__dict__["classifier"], self.plan, self.task, Batch(x, y),
            soft, taps, self.temperature, self.alpha, bf16=x.device.type == "cuda",
        )


def optimizer_for(model: nn.Module, lr: float, epochs: int) -> tuple[torch.optim.Optimizer, Any]:
    """Every role's optimizer and schedule: Adam at `lr`, cosine over `epochs` epochs."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)


def apply_update(role: Role) -> None:
    """The optimizer's step on the gradients gathered since the last, then zero them."""
    role.optimizer.step()
    role.optimizer.zero_grad(set_to_none=True)


def with_hints(
    parts: LossParts,
    plan: Plan,
    features: list[torch.Tensor],
    maps: list[torch.Tensor],
    taps: dict[str, list[torch.Tensor]] | None,
) -> LossParts:
    """`parts` plus feature_weight · `hint_loss` and attention_weight · `attention_loss`."""
    if taps is None:
        raise RuntimeError("hint losses need the hint teacher's taps (online teachers)")
    total = parts.total
    feature = attention = None
    if plan.pairs:
        matched = cosine_hidden_loss if plan.feature_loss == "cosine" else hint_loss
        feature = matched(features, taps["features"])
        total = total + plan.feature_weight * feature
    if plan.attention_map:
        attention = attention_loss(maps, taps["attention"])
        total = total + plan.attention_weight * attention
    return LossParts(
        total=total,
        hard=parts.hard,
        soft=parts.soft,
        feature=None if feature is None else feature.detach(),
        attention=None if attention is None else attention.detach(),
    )
