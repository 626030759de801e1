"""Distillation without Ray: shards and batch order, the teacher cache, top-k and ensemble
targets, online = offline targets, the KD objective, checkpoint RNG, storage on a folder,
the cluster job's environment, and the new DistillConfig checks."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from kdflow.config import DistillConfig
from kdflow.data import storage
from kdflow.data.prepared import frame_sha256, read_meta, split_frame, write_prepared
from kdflow.distill import cache as teacher_cache
from kdflow.distill.driver import (
    Targets,
    TeacherOutputs,
    _batches,
    _rng_state,
    _set_rng_state,
    _teacher_task,
    ensemble_report,
    ensemble_targets,
    epoch_order,
    feature_stats,
    load_rows,
    shard_bounds,
    teacher_parts,
)
from kdflow.distill.losses import entropy, kd_loss, kd_objective, soft_targets
from kdflow.errors import ConfigError, KdflowError
from kdflow.models.artifacts import save_model
from kdflow.models.zoo import build_classifier


def prepared(folder: Path, seed: int = 0, rows: int = 200) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(rows, 4)).astype(np.float32), columns=list("abcd"))
    frame["label"] = rng.integers(0, 3, rows)
    train, test = split_frame(frame, "label", 0.2, seed)
    train, val = split_frame(train, "label", 0.2, seed)
    write_prepared(
        folder, {"train": train, "val": val, "test": test}, "label", None,
        frame_sha256(frame), "unit",
    )
    return folder


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


def test_batches_follow_the_order_carry_the_targets_and_sum_their_entropy():
    x = torch.randn(300, 4)
    y = torch.randint(0, 3, (300,))
    targets = Targets(3, dense=torch.softmax(torch.randn(300, 3), -1))
    order = epoch_order(300, 300, 1)
    sink: list[torch.Tensor] = []
    batches = list(_batches(x, y, order, 7, torch.device("cpu"), targets, entropy_sink=sink))
    assert len(batches) == math.ceil(300 / 7)
    assert torch.equal(torch.cat([b[0] for b in batches]), x[order])
    assert torch.equal(torch.cat([b[2] for b in batches]), targets.rows(order))
    assert float(sum(sink)) == pytest.approx(float(entropy(targets.rows(order)).sum()), rel=1e-5)


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
    scale = torch.tensor([0.0, 2.0])  # a constant feature gets none
    ensemble = {"top_k": 0, "n_classes": 3, "temperature": 2.0, "ensemble": "mean_probs",
                "weights": [1.0]}

    def run(seed: int, teacher: torch.nn.Module | None = None) -> torch.Tensor:
        noise = (scale, torch.Generator().manual_seed(seed))
        batches = _batches(x, y, order, 50, torch.device("cpu"), noise=noise, ensemble=ensemble,
                           teachers=None if teacher is None else [teacher])
        return torch.cat([b[0] for b in batches])

    a, b = run(7), run(7)
    assert torch.equal(a, b), "the same seed gives every role the same noisy rows"
    assert not torch.equal(a, run(8))
    assert torch.all(a[:, 0] == 0)
    assert float(a[:, 1].std()) == pytest.approx(2.0, rel=0.15)
    teacher = _Recorder()
    noisy = run(7, teacher)
    assert torch.equal(torch.cat(teacher.seen), noisy), "teachers label the noisy rows"


def test_augment_noise_needs_online_teachers():
    with pytest.raises(ConfigError, match="--augment-noise: needs --teacher-mode online"):
        DistillConfig(augment_noise=0.1)
    with pytest.raises(ConfigError, match="--augment-noise: must be >= 0"):
        DistillConfig(augment_noise=-0.1, teacher_mode="online")
    assert DistillConfig(augment_noise=0.1, teacher_mode="online").augment_noise == 0.1


def test_cache_entry_reads_one_shard_by_byte_range(tmp_path):
    logits = np.random.default_rng(0).normal(size=(50, 7)).astype(np.float16)
    val = np.ones((5, 7), np.float16)
    meta = {"dataset_key": "d", "teacher_sha256": "t", "top_k": 0, "rows": 50, "classes": 7}
    uri = str(tmp_path / "cache" / "e.safetensors")
    teacher_cache.write_entry(uri, {"train": logits}, val, meta)
    entry = teacher_cache.CacheEntry.open(uri)
    assert entry is not None and entry.matches(meta)
    assert not entry.matches(meta | {"rows": 51})
    np.testing.assert_array_equal(entry.train_rows(12, 31)["train"], logits[12:31])
    np.testing.assert_array_equal(entry.rows("val"), val)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["e.safetensors"]
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 4)
    assert teacher_cache.CacheEntry.open(str(tmp_path / "junk.safetensors")) is None
    assert teacher_cache.CacheEntry.open(str(tmp_path / "missing.safetensors")) is None


def test_cache_key_changes_when_the_split_changes(tmp_path):
    a = teacher_cache.dataset_key(str(prepared(tmp_path / "a", seed=0)))
    b = teacher_cache.dataset_key(str(prepared(tmp_path / "b", seed=1)))
    again = teacher_cache.dataset_key(str(prepared(tmp_path / "c", seed=0)))
    assert a != b and a == again


def test_cache_memory_in_full_and_at_top_k():
    assert teacher_cache.entry_bytes(60_000, 10) == 1_200_000
    assert teacher_cache.entry_bytes(1_281_167, 1000, top_k=32) == 1_281_167 * 32 * 4
    assert teacher_cache.entry_bytes(100, 50_000, top_k=8) == 100 * 8 * 6


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


def test_kd_objective_has_the_gradient_of_kd_loss_and_differs_by_the_teacher_entropy():
    torch.manual_seed(0)
    s = torch.randn(8, 10, requires_grad=True)
    y = torch.randint(0, 10, (8,))
    p = torch.softmax(torch.randn(8, 10), -1)
    for temperature, alpha in [(2.0, 0.2), (1.0, 0.5), (4.0, 0.0)]:
        loss, hard, kl = kd_loss(s, y, p, temperature, alpha)
        objective, hard2, cross = kd_objective(s, y, p, temperature, alpha)
        (g1,) = torch.autograd.grad(loss, s)
        (g2,) = torch.autograd.grad(objective, s)
        torch.testing.assert_close(g1, g2)
        h = entropy(p).mean()
        scale = (1 - alpha) * temperature**2
        assert float((objective - loss).detach()) == pytest.approx(float(scale * h), abs=1e-5)
        assert float(hard2) == pytest.approx(float(hard))
        assert float(cross - h) == pytest.approx(float(kl), abs=1e-5)


def test_weighted_ensemble_follows_validation_accuracy_and_reports_agreement():
    y = np.array([0, 1, 2, 0])
    right = np.eye(3, dtype=np.float16)[y] * 8
    half = np.eye(3, dtype=np.float16)[[0, 1, 0, 1]] * 8  # right on the first two rows
    teachers = [TeacherOutputs("a", {}, right, None, False, 0.0),
                TeacherOutputs("b", {}, half, None, False, 0.0)]
    report = ensemble_report(teachers, y, DistillConfig(ensemble="weighted_probs"))
    assert report["teacher_val_accuracy"] == [1.0, 0.5]
    assert report["weights"] == pytest.approx([2 / 3, 1 / 3])
    assert report["agreement"] == [1.0, 0.5]
    assert report["val_accuracy"] == 1.0
    uniform = ensemble_report(teachers, y, DistillConfig(ensemble="mean_logits"))
    assert uniform["weights"] == [0.5, 0.5]


def test_checkpoint_rng_state_round_trips():
    torch.manual_seed(3)
    np.random.seed(3)
    tensors, meta = _rng_state()
    first = (torch.rand(3), np.random.rand(3))
    _set_rng_state(tensors, meta)
    again = (torch.rand(3), np.random.rand(3))
    assert torch.equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])


def test_teacher_task_fills_the_cache_in_float16_and_refuses_a_teacher_for_other_data(tmp_path):
    data = prepared(tmp_path / "data")
    meta = read_meta(data)
    teacher = build_classifier("mlp:hidden=8", [4], 3, 4)
    save_model(teacher, tmp_path / "teacher", meta.classes, meta.feature_columns)
    rows = meta.rows["train"]
    entry_meta = {"dataset_key": "k", "teacher_sha256": "t", "top_k": 2, "rows": rows,
                  "classes": 3}
    uri = str(tmp_path / "cache.safetensors")
    out = _teacher_task(str(data), str(tmp_path / "teacher"), asdict(meta), uri, entry_meta)
    assert out["val_logits"].shape == (meta.rows["val"], 3)
    entry = teacher_cache.CacheEntry.open(uri)
    assert entry is not None and entry.matches(entry_meta)
    shard = entry.train_rows(0, rows)
    assert shard["train_values"].dtype == np.float16 and shard["train_values"].shape == (rows, 2)
    assert shard["train_indices"].dtype == np.int16
    other = build_classifier("mlp:hidden=8", [4], 5, 4)
    save_model(other, tmp_path / "other", list("abcde"), meta.feature_columns)
    with pytest.raises(KdflowError, match="expects 4 features and 5 classes; the data has 4"):
        _teacher_task(str(data), str(tmp_path / "other"), asdict(meta), None, entry_meta)


def test_load_rows_reads_a_row_range_across_row_groups(tmp_path):
    data = prepared(tmp_path / "data")
    meta = read_meta(data)
    table = pq.read_table(data / "train.parquet")
    pq.write_table(table, data / "train.parquet", row_group_size=10)
    part = load_rows(str(data), "train", meta, 8, 27)
    expected = table.slice(8, 19).to_pandas()
    np.testing.assert_array_equal(part.y, expected.pop("label").to_numpy())
    np.testing.assert_array_equal(part.x, expected.to_numpy(np.float32))
    assert load_rows(str(data), "train", meta, 5, 5).x.shape == (0, 4)


def test_feature_stats_are_the_training_split_mean_and_std(tmp_path):
    data = prepared(tmp_path / "data")
    meta = read_meta(data)
    x = pd.read_parquet(data / "train.parquet").drop(columns="label").to_numpy(np.float64)
    mean, std = feature_stats(str(data), meta)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, x.std(0, ddof=1), rtol=1e-6)


def test_storage_on_a_folder_round_trips_and_leaves_no_temporary_files(tmp_path):
    root = str(tmp_path / "store")
    uri = storage.join(root, "a", "b.bin")
    storage.write_bytes(uri, b"0123456789")
    assert storage.exists(uri) and storage.size(uri) == 10
    assert storage.read_range(uri, 3, 4) == b"3456"
    assert storage.list_files(root) == ["a/b.bin"]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.txt").write_text("x")
    storage.upload_dir(tmp_path / "src", storage.join(root, "copy"))
    storage.download_dir(storage.join(root, "copy"), tmp_path / "back")
    assert (tmp_path / "back" / "f.txt").read_text() == "x"
    storage.delete(uri)
    assert not storage.exists(uri)
    with pytest.raises(storage.StorageError, match="no such file"):
        storage.read_bytes(uri)
    assert storage.join("s3://b/p/", "x", "y") == "s3://b/p/x/y"


def test_job_environment_carries_the_s3_endpoint_but_never_credentials(monkeypatch):
    from kdflow.distill.cluster import job_env

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    env = job_env()
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.2"
    assert not {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"} & set(env)


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


def test_parquet_row_groups_are_respected_by_read_parquet_rows(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"v": list(range(35))}), path, row_group_size=10)
    assert storage.read_parquet_rows(str(path), 9, 21).column("v").to_pylist() == list(
        range(9, 21)
    )
    assert storage.read_parquet_rows(str(path), 30).num_rows == 5


def test_pure_kd_epoch_reports_the_hard_loss_the_per_step_way():
    """With alpha = 0 the reported CE is computed once per epoch (not per step): it must be
    the row-weighted mean of the per-batch CE that the model's outputs gave during the epoch."""
    import torch.nn.functional as F

    from kdflow.distill.driver import _epoch

    cpu = torch.device("cpu")
    x, y = torch.randn(130, 4), torch.randint(0, 3, (130,))  # last batch: 2 rows
    targets = Targets(3, dense=torch.softmax(torch.randn(130, 3), -1))
    order = epoch_order(130, 130, 0)
    seen_ce = []

    class Recording(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = build_classifier("mlp:hidden=8", [4], 3, 4)

        def forward(self, rows: torch.Tensor) -> torch.Tensor:
            return self.inner(rows)

    model = Recording()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay: outputs repeat
    batches = list(_batches(x, y, order, 64, cpu, targets=targets, entropy_sink=[]))
    for batch in batches:
        with torch.no_grad():
            seen_ce.append(float(F.cross_entropy(model(batch[0]), batch[1])) * len(batch[1]))
    _, hard, _, seen, _ = _epoch(model, batches, optimizer, cpu, 2.0, 0.0)
    assert seen == 130
    assert hard == pytest.approx(sum(seen_ce) / 130, rel=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_epoch_trains_under_bf16_from_pinned_blocks_offline_and_online():
    from kdflow.distill.driver import _epoch

    cuda = torch.device("cuda")
    x, y = torch.randn(500, 4), torch.randint(0, 3, (500,))
    order = epoch_order(500, 500, 0)
    teachers = [build_classifier("mlp:hidden=8", [4], 3, 4).to(cuda).eval() for _ in range(2)]
    ensemble = {"top_k": 2, "temperature": 2.0, "ensemble": "weighted_probs",
                "weights": [0.6, 0.4], "n_classes": 3}
    targets = Targets(3, dense=torch.softmax(torch.randn(500, 3), -1))
    for kwargs in ({"targets": targets}, {"teachers": teachers, "ensemble": ensemble}):
        model = build_classifier("mlp:hidden=8", [4], 3, 4).to(cuda)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        sink: list[torch.Tensor] = []
        batches = _batches(x, y, order, 64, cuda, entropy_sink=sink, **kwargs)
        loss, hard, soft, seen, _ = _epoch(model, batches, optimizer, cuda, 2.0, 0.5)
        assert seen == 500 and math.isfinite(loss) and soft > 0 and sink
