"""Tasks (`kdflow.distill.tasks`): what the loop asks of a task, for classification."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdflow.config import DistillConfig
from kdflow.distill.losses import kd_loss
from kdflow.distill.targets import Ensemble
from kdflow.distill.tasks import Classification, task_named
from kdflow.errors import ConfigError


def test_without_targets_the_loss_is_the_label_cross_entropy():
    logits, labels = torch.randn(6, 4), torch.randint(0, 4, (6,))
    parts = Classification().loss(logits, labels, None, 2.0, 1.0)
    torch.testing.assert_close(parts.total, F.cross_entropy(logits, labels))
    torch.testing.assert_close(parts.hard, F.cross_entropy(logits, labels))
    assert float(parts.soft) == 0.0


def test_with_targets_the_loss_has_the_gradient_of_hinton_kd_and_names_its_parts():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    labels = torch.randint(0, 4, (6,))
    soft = torch.softmax(torch.randn(6, 4), -1)
    parts = Classification().loss(logits, labels, soft, 2.0, 0.3)
    reference, _, _ = kd_loss(logits, labels, soft, 2.0, 0.3)
    (mine,) = torch.autograd.grad(parts.total, logits)
    (theirs,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(mine, theirs)
    assert parts.hard is not None and parts.feature is None and parts.attention is None
    # Pure KD: the label loss is only reported, so the loop computes it once per epoch.
    assert Classification().loss(logits, labels, soft, 2.0, 0.0).hard is None


def test_cached_parts_combine_into_the_ensembles_soft_targets():
    task = Classification()
    logits = [torch.randn(5, 6) for _ in range(2)]
    ensemble = Ensemble.of(DistillConfig(), 6, [0.5, 0.5], top_k=0)
    targets = task.targets([task.cache_parts(z, 0) for z in logits], ensemble)
    expected = torch.stack([torch.softmax(z.half().float() / 2.0, -1) for z in logits]).mean(0)
    torch.testing.assert_close(targets.rows(), expected)
    top = task.cache_parts(logits[0], 2)
    assert set(top) == {"train_values", "train_indices"} and top["train_values"].shape == (5, 2)


def test_an_unknown_task_is_refused():
    assert task_named("classification").metric == "accuracy"
    assert task_named("causal-lm").metric == "accuracy"  # token accuracy
    with pytest.raises(ConfigError, match="unknown task 'regression'; known: classification"):
        task_named("regression")
