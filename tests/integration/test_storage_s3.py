"""Checkpoints and the teacher cache on S3: moto's standalone S3 server on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.integration.servers import S3, S3_ENV, moto_s3

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def s3(ray_tmp) -> Iterator[S3]:
    """An S3 endpoint with one bucket; credentials and endpoint only in the environment.

    Ray workers inherit the environment of the Ray instance that starts them: restart the
    in-process Ray so they see this endpoint, and stop it again afterwards.
    """
    import ray

    ray.shutdown()
    with moto_s3("kdflow-test") as server, pytest.MonkeyPatch.context() as env:
        for name, value in S3_ENV.items():
            env.setenv(name, value)
        env.setenv("AWS_ENDPOINT_URL", server.endpoint)
        try:
            yield server
        finally:
            ray.shutdown()


def _keys(s3: S3, prefix: str) -> list[str]:
    # pyarrow writes "folder/" marker objects too; list only the files.
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", []) if o["Size"] > 0]


def test_storage_round_trips_on_s3_and_names_what_is_missing(s3, tmp_path):
    from kdflow.data import storage

    root = f"s3://{s3.bucket}"
    uri = f"{root}/unit/a.json"
    storage.write_json(uri, {"a": 1})
    assert storage.read_json(uri) == {"a": 1}
    assert storage.read_range(uri, 0, 4) == b"{\n  "
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.txt").write_text("x")
    storage.upload_dir(tmp_path / "src", f"{root}/unit/dir")
    assert storage.list_files(f"{root}/unit") == ["a.json", "dir/f.txt"]
    storage.download_dir(f"{root}/unit/dir", tmp_path / "back")
    assert (tmp_path / "back" / "f.txt").read_text() == "x"
    assert not [k for k in _keys(s3, "unit/") if ".tmp-" in k], "no temporary objects left"
    storage.delete(f"{root}/unit/dir")
    assert storage.list_files(f"{root}/unit") == ["a.json"], "a folder is deleted whole"
    with storage.writing_dir(f"{root}/unit/written") as folder:
        (folder / "w.txt").write_text("w")
    assert storage.read_bytes(f"{root}/unit/written/w.txt") == b"w"
    with pytest.raises(RuntimeError), storage.writing_dir(f"{root}/unit/failed") as folder:
        (folder / "half.txt").write_text("h")
        raise RuntimeError("the writer failed")
    assert not storage.exists(f"{root}/unit/failed"), "nothing uploaded from a failed block"
    storage.delete(f"{root}/unit/written")
    with pytest.raises(storage.StorageError, match=f"{root}/unit/missing.json: no such file"):
        storage.read_json(f"{root}/unit/missing.json")


def test_distill_on_s3_resumes_from_s3_checkpoints_and_reuses_the_s3_cache(
    s3, digits_dataset, small_teachers, tmp_path
):
    """Checkpoints and top-k cache entries land in the bucket; a worker killed after epoch 1
    resumes from the S3 checkpoint; a later run finds every teacher in the S3 cache."""
    from kdflow.config import DistillConfig
    from kdflow.data import storage
    from kdflow.data.sources import load_meta
    from kdflow.distill import cache as teacher_cache
    from kdflow.distill.run import distill
    from kdflow.distill.tasks import Classification
    from kdflow.distill.teachers import teacher_outputs

    root = f"s3://{s3.bucket}"
    cfg = DistillConfig(
        student_epochs=2,
        max_failures=1,
        storage_path=f"{root}/kd",
        top_k=3,
        ensemble="weighted_probs",
    )
    result = distill(
        digits_dataset,
        small_teachers,
        cfg,
        tmp_path / "student",
        tmp_path / "baseline",
        tmp_path / "unused",
        "on-s3",
        seed=0,
        fail_at_epoch=1,
    )
    assert [h["epoch"] for h in result["student"]["history"]] == [1, 2]
    assert (tmp_path / "student" / "model.safetensors").is_file()
    assert not (tmp_path / "unused").exists(), "nothing goes to the local work folder"
    weights = [t["weight"] for t in result["teachers"]]
    assert weights[0] != weights[1] and sum(weights) == pytest.approx(1.0)
    keys = _keys(s3, "kd/")
    cached = [k for k in keys if k.startswith("kd/teacher-cache/")]
    entries = sorted({k.rsplit("/", 1)[0] for k in cached if k.endswith("/meta.json")})
    assert len(entries) == 2 and all(e.endswith("-top3") for e in entries)
    shards = {e: [k for k in cached if k.startswith(f"{e}/fill-") and k.endswith(".parquet")]
              for e in entries}
    assert all(shards.values()), "each entry's Parquet shards are in the bucket"
    checkpoints = [k for k in keys if k.startswith("kd/ray/on-s3/checkpoint_")]
    assert any(k.endswith("state.safetensors") for k in checkpoints)

    meta = load_meta(str(digits_dataset))
    full = teacher_cache.entry_bytes(meta.rows["train"], meta.n_classes)
    assert all(sum(storage.size(f"{root}/{k}") for k in ks) < full for ks in shards.values()), (
        "top-3 of 10 is smaller"
    )
    again = teacher_outputs(
        str(digits_dataset), [str(t) for t in small_teachers], meta, cfg, f"{root}/kd", 3,
        Classification(),
    )
    assert [t.cache_hit for t in again] == [True, True]
    assert os.environ["AWS_ENDPOINT_URL"] == s3.endpoint


def test_in_process_distill_keeps_its_checkpoints_on_s3_and_resumes_from_them(
    s3, digits_dataset, small_teachers, tmp_path
):
    """`workers=0` writes its own checkpoints: to the bucket, the last two kept, and a
    rerun of a failed run resumes from the bucket."""
    from kdflow.config import DistillConfig
    from kdflow.distill.run import distill
    from kdflow.errors import KdflowError

    cfg = DistillConfig(student_epochs=3, workers=0, storage_path=f"s3://{s3.bucket}/kd0")
    args = (digits_dataset, small_teachers, cfg, tmp_path / "s", tmp_path / "b", tmp_path / "w")
    with pytest.raises(KdflowError, match="fault injected after epoch 2"):
        distill(*args, "in-process-s3", seed=0, fail_at_epoch=2)
    result = distill(*args, "in-process-s3", seed=0)
    assert [h["epoch"] for h in result["student"]["history"]] == [1, 2, 3]
    folders = sorted({k.split("/")[3] for k in _keys(s3, "kd0/ray/in-process-s3/checkpoint_")})
    assert folders == ["checkpoint_epoch_000002", "checkpoint_epoch_000003"]
    assert "kd0/ray/in-process-s3/in_process_latest.json" in _keys(s3, "kd0/ray/")
    assert not (tmp_path / "w").exists(), "nothing goes to the local work folder"


SDK_ATTEMPTS = 3
"""pyarrow's S3 client tries a request this many times (AwsStandardS3RetryStrategy)."""


def test_streamed_reads_retry_s3_errors_then_fail_with_the_key(s3, digits_dataset, tmp_path):
    """The bucket answers the training split's GETs with 503s: past pyarrow's own retries
    a read fails and Ray Data runs it again, so the pass still holds every row in the same
    order; an object that keeps failing stops the pass with its key."""
    import pyarrow.parquet as pq
    import torch

    from kdflow.data import storage
    from kdflow.distill import cache_fill, stream
    from kdflow.distill.runtime import ensure_ray

    local = tmp_path / "dataset"
    local.mkdir()
    for name in ("meta.json", "val.parquet", "test.parquet"):
        (local / name).write_bytes((digits_dataset / name).read_bytes())
    pq.write_table(pq.read_table(digits_dataset / "train.parquet"), local / "train.parquet",
                   row_group_size=200)
    uri = f"s3://{s3.bucket}/stream/dataset"
    storage.upload_dir(local, uri)
    plans, rows = stream.epoch_plan(stream.chunks(uri), seed=3, world=1)

    def labels() -> torch.Tensor:
        epoch = stream.StreamedEpoch(stream.ChunkReader(uri, None, None), plans[0], rows,
                                     batch_size=32, seed=3, n_classes=10)
        return torch.cat([b.y for b in epoch.batches(torch.device("cpu"), kd=False)])

    ensure_ray()
    undisturbed = labels()
    assert len(undisturbed) == rows
    # Two read tasks run at once: 2 × SDK_ATTEMPTS failures fail both tasks' first tries.
    s3.faults.arm("stream/dataset/train.parquet", times=2 * SDK_ATTEMPTS)
    try:
        throttled = labels()
        assert s3.faults.served == 2 * SDK_ATTEMPTS and s3.faults.left == 0
        assert torch.equal(throttled, undisturbed), "retried reads give the same stream"

        s3.faults.arm("stream/dataset/train.parquet", times=10**6)
        with pytest.raises(storage.StorageError,
                           match=f"^{uri}/train.parquet: cannot be read: AWS Error "
                           "SERVICE_UNAVAILABLE"):
            labels()
        # Each read ran 1 + IO_RETRIES times, each read tried SDK_ATTEMPTS times.
        assert s3.faults.served >= (1 + cache_fill.IO_RETRIES) * SDK_ATTEMPTS
    finally:
        s3.faults.arm("", 0)
