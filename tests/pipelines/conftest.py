"""Fixtures for tests/pipelines."""

from collections.abc import Iterator

import pytest

from tests.fakes.kfp_api import FakeKfpServer, serve_fake_kfp

# --- pipelines/remote.py: a fake KFP v2beta1 API (tests/fakes/kfp_api.py) -------------------


@pytest.fixture
def kfp_env(tmp_path, monkeypatch) -> None:
    """kfp.Client reads ~/.config/kfp/context.json and KF_PIPELINES_* variables: isolate both
    so a developer's own KFP settings cannot change what a test sees."""
    from kfp.client import client as kfp_client

    monkeypatch.setattr(
        kfp_client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp" / "context.json")
    )
    for name in (
        "KFP_TOKEN",
        "KF_PIPELINES_SA_TOKEN_PATH",
        "KF_PIPELINES_ENDPOINT",
        "KF_PIPELINES_UI_ENDPOINT",
        "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
        "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def kfp_api(kfp_env) -> Iterator[FakeKfpServer]:
    """A fake KFP API on 127.0.0.1 that validates requests against the v2beta1 swagger."""
    with serve_fake_kfp() as server:
        yield server
    assert server.api.fake_errors == [], "the fake KFP API broke its own contract"


# --- end of pipelines/remote.py fixtures ------------------------------------------------------
