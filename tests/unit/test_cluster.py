"""Cluster mode (`kdflow.distill.cluster`) without a cluster: what the Ray job inherits.
The job itself runs against a real two-node cluster in tests/integration/test_ray_cluster.py."""

from __future__ import annotations

from kdflow.distill.cluster import job_env


def test_job_environment_carries_the_s3_endpoint_but_never_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    env = job_env()
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.2"
    assert not {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"} & set(env)
