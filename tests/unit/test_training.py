"""The training loop: best-epoch weights, the no-distillation baseline, batched inference."""

import numpy as np
import pytest
import torch

from kdflow.data.prepared import Split
from kdflow.distill.training import (
    EpochStats,
    History,
    accuracy,
    cpu_budget,
    fit,
    limit_threads,
    make_loader,
    predict_logits,
    train_epoch,
)
from kdflow.models.zoo import build_classifier

CPU = torch.device("cpu")


def blobs(n=64, seed=0, flip=False):
    """Two separable classes in 4 features; `flip` swaps the labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 0.5, (n, 4)).astype(np.float32)
    x[:, 0] += np.where(y == 1, 2.0, -2.0)
    return Split(x=x, y=(1 - y if flip else y).astype(np.int64))


def new_model(seed=0):
    torch.manual_seed(seed)
    return build_classifier("mlp:hidden=8", [4], 2, 4)


def test_fit_keeps_the_weights_of_the_best_validation_epoch():
    # Validation labels are the training labels flipped: the more the model learns, the worse
    # it does there, so the best epoch comes before the last one.
    model = new_model()
    snapshots = {}

    def snapshot(stats):
        snapshots[stats.epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    history = fit(
        model,
        blobs(),
        blobs(seed=1, flip=True),
        epochs=4,
        lr=0.05,
        batch_size=16,
        seed=0,
        device=CPU,
        on_epoch=snapshot,
    )
    best = history.best
    assert best.epoch < 4
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, snapshots[best.epoch][key], rtol=0, atol=0)
    assert accuracy(model, blobs(seed=1, flip=True)) == best.val_accuracy


def test_fit_records_one_entry_per_epoch_and_returns_a_cpu_model_in_eval_mode():
    model = new_model()
    seen = []
    history = fit(
        model,
        blobs(),
        blobs(seed=1),
        epochs=3,
        lr=0.05,
        batch_size=16,
        seed=0,
        device=CPU,
        on_epoch=seen.append,
    )
    assert [e.epoch for e in history.epochs] == [1, 2, 3]
    assert seen == history.epochs
    assert not model.training
    assert next(model.parameters()).device.type == "cpu"


def test_fit_learns_a_separable_problem():
    model = new_model()
    fit(model, blobs(), blobs(seed=1), epochs=5, lr=0.05, batch_size=16, seed=0, device=CPU)
    assert accuracy(model, blobs(seed=2)) >= 0.95


def test_best_epoch_prefers_the_earliest_of_equal_accuracies():
    history = History(
        [
            EpochStats(1, 1.0, 1.0, 0.0, 0.5),
            EpochStats(2, 1.0, 1.0, 0.0, 0.9),
            EpochStats(3, 1.0, 1.0, 0.0, 0.9),
        ]
    )
    assert history.best.epoch == 2


def train_one_epoch(soft, use_soft):
    model = new_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    loader = make_loader(blobs(), batch_size=16, seed=3, soft=soft)
    losses = train_epoch(
        model, loader, optimizer, CPU, temperature=4.0, alpha=0.3, use_soft=use_soft
    )
    return losses, model.state_dict()


def random_soft_targets(n=64):
    rng = np.random.default_rng(5)
    probs = rng.random((n, 2))
    return probs / probs.sum(1, keepdims=True)


def test_train_epoch_without_soft_ignores_the_soft_targets():
    with_soft, state_a = train_one_epoch(random_soft_targets(), use_soft=False)
    without, state_b = train_one_epoch(None, use_soft=False)
    assert with_soft == without
    assert with_soft[2] == 0.0
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=0)


def test_train_epoch_with_soft_targets_reports_the_soft_loss():
    (total, hard, soft), _ = train_one_epoch(random_soft_targets(), use_soft=True)
    assert soft > 0
    assert total != hard


def test_predict_logits_in_batches_equals_a_single_pass():
    model = new_model()
    x = blobs(n=50).x
    batched = predict_logits(model, x, batch_size=7)
    whole = predict_logits(model, x, batch_size=1024)
    assert batched.shape == (50, 2)
    torch.testing.assert_close(batched, whole)


def test_predict_logits_of_no_rows_is_empty():
    assert predict_logits(new_model(), np.zeros((0, 4), np.float32)).numel() == 0


def test_accuracy_of_an_empty_split_is_nan():
    empty = Split(x=np.zeros((0, 4), np.float32), y=np.zeros(0, np.int64))
    assert np.isnan(accuracy(new_model(), empty))


def _cgroup(tmp_path, files: dict[str, str]):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),  # cgroup v2: a 2-CPU limit
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs round up
        ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU: still one thread
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # v1
    ],
)
def test_cpu_budget_follows_a_cgroup_cpu_limit(tmp_path, monkeypatch, files, expected):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(64)))  # a 64-core node
    assert cpu_budget(_cgroup(tmp_path, files)) == expected


@pytest.mark.parametrize(
    "files",
    [
        {},  # no cgroup files at all
        {"cpu.max": "max 100000\n"},  # v2 without a limit
        {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},  # v1, no limit
        {"cpu.max": "garbage\n"},  # unreadable: the affinity stands
    ],
)
def test_cpu_budget_without_a_limit_is_the_affinity(tmp_path, monkeypatch, files):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    assert cpu_budget(_cgroup(tmp_path, files)) == 4


def test_limit_threads_lowers_torch_threads_to_the_budget_and_never_raises_them(monkeypatch):
    import kdflow.distill.training as training

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        monkeypatch.setattr(training, "cpu_budget", lambda: 2)
        assert limit_threads() == 2
        monkeypatch.setattr(training, "cpu_budget", lambda: 8)
        assert limit_threads() == 2
    finally:
        torch.set_num_threads(before)
