"""The training loop (`kdflow.distill.loop`) without Ray: shards and batch order, batches
with their cached targets and their noise, and what one epoch of a role reports."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdflow.config import DistillConfig
from kdflow.distill.loop import Views, batches, epoch_order, prefetched, run_epoch, shard_bounds
from kdflow.distill.step import OnlineTeachers, Role
from kdflow.distill.targets import Ensemble, Targets
from kdflow.distill.tasks import Classification
from kdflow.models.zoo import build_classifier

CPU = torch.device("cpu")
TASK = Classification()


def make_role(kd: bool, alpha: float, lr: float = 0.05, features: int = 4) -> Role:
    """A 3-class MLP role; `lr=0` under SGD keeps its weights, so its outputs repeat."""
    torch.manual_seed(0)
    model = build_classifier("mlp:hidden=8", [features], 3, features)
    if lr:
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2)
    name = "student" if kd else "baseline"
    return Role(name, model, model, optimizer, scheduler, kd=kd, alpha=alpha if kd else 1.0)


def random_targets(rows: int) -> Targets:
    return Targets(3, dense=torch.softmax(torch.randn(rows, 3), -1))


def test_shards_cover_every_row_once_and_every_rank_takes_the_same_number_of_steps():
    for rows, world in [(10, 1), (10, 3), (7, 2), (1797, 4)]:
        bounds = [shard_bounds(rows, r, world) for r in range(world)]
        assert [i for lo, hi in bounds for i in range(lo, hi)] == list(range(rows))
        per_rank = math.ceil(rows / world)
        assert {len(epoch_order(hi - lo, per_rank, 5)) for lo, hi in bounds} == {per_rank}


def test_epoch_order_is_a_permutation_that_depends_only_on_the_seed():
    order = epoch_order(100, 100, 42)
    assert sorted(order.tolist()) == list(range(100))
    assert torch.equal(order, epoch_order(100, 100, 42))
    assert not torch.equal(order, epoch_order(100, 100, 43))


def test_batches_follow_the_order_and_carry_each_rows_cached_targets():
    x = torch.randn(300, 4)
    y = torch.randint(0, 3, (300,))
    targets = random_targets(300)
    order = epoch_order(300, 300, 1)
    got = list(batches(x, y, order, 7, CPU, targets))
    assert len(got) == math.ceil(300 / 7)
    assert torch.equal(torch.cat([b.x for b in got]), x[order])
    assert torch.equal(torch.cat([b.y for b in got]), y[order])
    assert torch.equal(torch.cat([b.soft for b in got]), targets.rows(order))
    assert all(b.soft is None for b in batches(x, y, order, 7, CPU))


class _Recorder(torch.nn.Module):
    """A 'teacher' that remembers the inputs it was shown and returns fixed logits."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return torch.zeros(len(x), 3)


def test_augment_noise_is_per_feature_seeded_and_what_the_teachers_label():
    x = torch.zeros(200, 2)
    y = torch.zeros(200, dtype=torch.long)
    order = epoch_order(200, 200, 1)
    # A constant feature (std 0) gets none; the other, 2 × its std of 2.
    views = Views(DistillConfig(augment_noise=2.0, teacher_mode="online"), ([0, 0], [0, 1]), 3)

    def noisy(seed: int) -> list[torch.Tensor]:
        return [b.x for b in batches(x, y, order, 50, CPU, transform=views.transform(seed))]

    a, b = torch.cat(noisy(7)), torch.cat(noisy(7))
    assert torch.equal(a, b), "the same seed gives every role the same noisy rows"
    assert not torch.equal(a, torch.cat(noisy(8)))
    assert torch.all(a[:, 0] == 0)
    assert float(a[:, 1].std()) == pytest.approx(2.0, rel=0.15)

    teacher = _Recorder()
    ensemble = Ensemble(3, 2.0, "mean_probs", (1.0,), top_k=0, separate=False)
    online = OnlineTeachers([teacher], ensemble, TASK)
    steps = batches(x, y, order, 50, CPU, transform=views.transform(7))
    run_epoch(make_role(kd=True, alpha=0.0, features=2), steps, TASK, 2.0, CPU, online)
    assert torch.equal(torch.cat(teacher.seen), a), "teachers label the noisy rows"
    assert Views(DistillConfig(), ([0, 0], [1, 1]), 3).transform(7) is None


def test_augmented_image_batches_are_seeded_prefetched_and_what_the_teachers_label():
    x = torch.randint(0, 256, (120, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 3, (120,))
    order = epoch_order(120, 120, 1)
    cfg = DistillConfig(augment=["crop", "rotate", "mixup"], teacher_mode="online")
    views = Views(cfg, ([0.0] * 64, [1.0] * 64), 3)

    def augmented(seed: int, ahead: bool) -> list:
        steps = batches(x, y, order, 32, CPU, transform=views.transform(seed))
        return list(prefetched(steps) if ahead else steps)

    plain, ahead = augmented(5, False), augmented(5, True)
    assert len(plain) == 4 and all(torch.equal(a.x, b.x) for a, b in zip(plain, ahead, strict=True))
    assert plain[0].x.dtype == torch.float32 and plain[0].x.shape == (32, 1, 8, 8)
    assert plain[0].y.shape == (32, 3), "mixup mixes the labels too"
    assert torch.allclose(plain[0].y.sum(1), torch.ones(32))
    assert not torch.equal(plain[0].x, augmented(6, False)[0].x)

    teacher = _Recorder()
    ensemble = Ensemble(3, 2.0, "mean_probs", (1.0,), top_k=0, separate=False)
    role = make_role(kd=True, alpha=0.5, features=64)
    stats = run_epoch(role, prefetched(batches(x, y, order, 32, CPU, transform=views.transform(5))),
                      TASK, 2.0, CPU, OnlineTeachers([teacher], ensemble, TASK))
    assert torch.equal(torch.cat(teacher.seen), torch.cat([b.x for b in plain]))
    assert stats["rows"] == 120 and math.isfinite(stats["loss"])


def test_prefetched_raises_the_producers_error_and_stops_with_the_consumer():
    def failing():
        yield 1
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        list(prefetched(failing()))  # type: ignore[arg-type]
    produced = []

    def counting():
        for i in range(1000):
            produced.append(i)
            yield i

    for item in prefetched(counting()):  # type: ignore[arg-type]
        if item == 2:
            break
    assert len(produced) < 10, "a consumer that stops stops the producer"


def test_the_reported_soft_loss_is_the_kl_to_the_cached_targets():
    """The step trains on the cross-entropy H(p_T, q); the epoch reports it less the
    cached targets' entropy over the epoch's rows: the KL, and T²·KL as the loss."""
    x, y = torch.randn(100, 4), torch.randint(0, 3, (100,))
    targets, order, temperature = random_targets(100), epoch_order(100, 100, 0), 2.0
    role = make_role(kd=True, alpha=0.0, lr=0.0)
    with torch.no_grad():
        log_q = F.log_softmax(role.model(x[order]) / temperature, -1)
    p = targets.rows(order)
    kl = float((p * (p.log() - log_q)).sum(-1).mean())
    stats = run_epoch(
        role, batches(x, y, order, 16, CPU, targets), TASK, temperature, CPU,
        entropy=targets.entropy[order].sum(),
    )
    assert stats["rows"] == 100
    assert stats["soft_loss"] == pytest.approx(kl, rel=1e-4)
    assert stats["loss"] == pytest.approx(temperature**2 * kl, rel=1e-4)


def test_pure_kd_epoch_reports_the_hard_loss_the_per_step_way():
    """With alpha = 0 the reported CE is computed once per epoch (not per step): it must be
    the row-weighted mean of the per-batch CE that the model's outputs gave during the epoch."""
    x, y = torch.randn(130, 4), torch.randint(0, 3, (130,))  # last batch: 2 rows
    targets, order = random_targets(130), epoch_order(130, 130, 0)
    role = make_role(kd=True, alpha=0.0, lr=0.0)
    seen_ce = []
    for batch in batches(x, y, order, 64, CPU, targets):
        with torch.no_grad():
            seen_ce.append(float(F.cross_entropy(role.model(batch.x), batch.y)) * len(batch.y))
    stats = run_epoch(role, batches(x, y, order, 64, CPU, targets), TASK, 2.0, CPU)
    assert stats["rows"] == 130
    assert stats["hard_loss"] == pytest.approx(sum(seen_ce) / 130, rel=1e-5)


def _one_epoch(role: Role, targets: Targets | None) -> dict[str, float]:
    x, y = torch.randn(64, 4, generator=torch.Generator().manual_seed(1)), torch.arange(64) % 3
    return run_epoch(role, batches(x, y, epoch_order(64, 64, 3), 16, CPU, targets), TASK, 4.0, CPU)


def test_the_baseline_trains_as_if_there_were_no_teachers():
    targets = random_targets(64)
    with_soft, without = make_role(kd=False, alpha=0.3), make_role(kd=False, alpha=0.3)
    stats = _one_epoch(with_soft, targets)
    assert stats == _one_epoch(without, None)
    assert stats["soft_loss"] == 0.0
    for key, value in with_soft.classifier.state_dict().items():
        torch.testing.assert_close(without.classifier.state_dict()[key], value, rtol=0, atol=0)


def test_the_student_reports_its_soft_loss_apart_from_the_label_loss():
    stats = _one_epoch(make_role(kd=True, alpha=0.3), random_targets(64))
    assert stats["soft_loss"] > 0
    assert stats["loss"] != stats["hard_loss"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_epoch_trains_under_bf16_from_pinned_blocks_offline_and_online():
    cuda = torch.device("cuda")
    x, y = torch.randn(500, 4), torch.randint(0, 3, (500,))
    order = epoch_order(500, 500, 0)
    models = [build_classifier("mlp:hidden=8", [4], 3, 4).to(cuda).eval() for _ in range(2)]
    ensemble = Ensemble(3, 2.0, "weighted_probs", (0.6, 0.4), top_k=2, separate=False)
    online = OnlineTeachers(models, ensemble, TASK)
    targets = random_targets(500)
    for cached, teachers in ((targets, None), (None, online)):
        role = make_role(kd=True, alpha=0.5)
        role.model.to(cuda)
        role.optimizer = torch.optim.Adam(role.model.parameters(), lr=1e-2)
        steps = batches(x, y, order, 64, cuda, cached)
        entropy = targets.entropy[order].sum() if cached is not None else None
        stats = run_epoch(role, steps, TASK, 2.0, cuda, teachers, entropy)
        assert stats["rows"] == 500 and math.isfinite(stats["loss"]) and stats["soft_loss"] > 0


def test_accumulated_half_batches_update_as_the_whole_batch():
    """`grad_accum` 2 over batches of 32 takes the optimizer steps batches of 64 take (the
    mean gradient of two halves is the whole batch's); an epoch's leftover batch still
    updates the model, its gradient not carried into the next epoch."""
    x, y = torch.randn(256, 4, generator=torch.Generator().manual_seed(2)), torch.arange(256) % 3
    targets, order = random_targets(256), epoch_order(256, 256, 5)
    whole, halves = make_role(kd=True, alpha=0.3), make_role(kd=True, alpha=0.3)
    expected = run_epoch(whole, batches(x, y, order, 64, CPU, targets), TASK, 2.0, CPU)
    stats = run_epoch(halves, batches(x, y, order, 32, CPU, targets), TASK, 2.0, CPU,
                      accumulate=2)
    assert stats["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    for key, value in whole.classifier.state_dict().items():
        torch.testing.assert_close(halves.classifier.state_dict()[key], value, rtol=1e-5,
                                   atol=1e-6)
    # 3 batches at accumulate 2: one update of two, then the third alone at the epoch's end.
    odd, even = make_role(kd=True, alpha=0.3), make_role(kd=True, alpha=0.3)
    run_epoch(odd, batches(x, y, order[:96], 32, CPU, targets), TASK, 2.0, CPU, accumulate=2)
    run_epoch(even, batches(x, y, order[:64], 32, CPU, targets), TASK, 2.0, CPU, accumulate=2)
    assert any(not torch.equal(a, b) for a, b in
               zip(odd.classifier.parameters(), even.classifier.parameters(), strict=True))
    assert all(p.grad is None for p in odd.classifier.parameters()), "nothing carried over"
