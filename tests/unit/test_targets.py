"""Teacher targets (`kdflow.distill.targets`): top-k caches, the ensemble's soft targets
(the same per batch as over the whole shard), per-teacher entropies, and the ensemble's
weights and agreement on the validation split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdflow.config import DistillConfig
from kdflow.distill.losses import soft_targets
from kdflow.distill.targets import ensemble_report, ensemble_targets, teacher_parts


def test_top_k_targets_are_each_teachers_renormalised_top_k_distribution():
    logits = [torch.randn(20, 10), torch.randn(20, 10)]
    parts = [teacher_parts(z, 3) for z in logits]
    got = ensemble_targets(parts, 10, 2.0, "mean_probs", [0.5, 0.5]).rows()
    expected = torch.zeros(20, 10)
    for z in logits:
        z16 = z.half().float()
        kept = z16.topk(3, dim=-1).indices
        masked = torch.full_like(z16, float("-inf")).scatter(1, kept, z16.gather(1, kept))
        expected += 0.5 * torch.softmax(masked / 2.0, -1)
    torch.testing.assert_close(got, expected)
    assert torch.allclose(got.sum(-1), torch.ones(20))
    full = ensemble_targets([teacher_parts(z, 10) for z in logits], 10, 2.0, "mean_probs", [1, 1])
    dense = soft_targets([z.half() for z in logits], 2.0)
    torch.testing.assert_close(full.rows(), dense)


@pytest.mark.parametrize("top_k", [0, 3])
def test_online_targets_equal_offline_targets_row_for_row(top_k):
    """Per-batch (online) and whole-shard (offline) ensembles give identical rows."""
    logits = [torch.randn(64, 10) * 3, torch.randn(64, 10) * 3]
    whole = ensemble_targets(
        [teacher_parts(z, top_k) for z in logits], 10, 2.0, "weighted_probs", [0.7, 0.3]
    )
    idx = torch.tensor([5, 17, 40, 63])
    batch = ensemble_targets(
        [teacher_parts(z[idx], top_k) for z in logits], 10, 2.0, "weighted_probs", [0.7, 0.3]
    )
    # Equal to float32 rounding: a softmax over 64 rows and over 4 can take different
    # vector paths on some CPUs, and differ in the last bit.
    torch.testing.assert_close(whole.rows(idx), batch.rows(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(whole.entropy[idx], batch.entropy, rtol=1e-6, atol=1e-7)


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


def test_weighted_ensemble_follows_validation_accuracy_and_reports_agreement():
    y = np.array([0, 1, 2, 0])
    right = np.eye(3, dtype=np.float16)[y] * 8
    half = np.eye(3, dtype=np.float16)[[0, 1, 0, 1]] * 8  # right on the first two rows
    report = ensemble_report([right, half], y, DistillConfig(ensemble="weighted_probs"))
    assert report["teacher_val_accuracy"] == [1.0, 0.5]
    assert report["weights"] == pytest.approx([2 / 3, 1 / 3])
    assert report["agreement"] == [1.0, 0.5]
    assert report["val_accuracy"] == 1.0
    uniform = ensemble_report([right, half], y, DistillConfig(ensemble="mean_logits"))
    assert uniform["weights"] == [0.5, 0.5]
