"""A local sqlite MLflow registry for the registry tests (real MLflow, no server)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from kdflow.mlflow.client import ACCURACY_TAG, DATASET_TAG, RetryPolicy, mlflow_client


@dataclass
class RegisteredModel:
    """A fresh registered model in the store, with quick retries and a short lock wait."""

    store: str
    client: Any
    name: str
    policy: RetryPolicy = RetryPolicy(attempts=3, first_delay_s=0.0, lock_ttl_s=60.0,
                                      lock_wait_s=0.5)
    data: str = "a" * 64
    """The test data's SHA-256, as a version's tags carry it."""

    def add_version(self, accuracy: float, dataset: str | None = None) -> str:
        """A version without artifacts: all that the alias logic reads is its tags."""
        version = self.client.create_model_version(
            self.name, "file:///nowhere",
            tags={ACCURACY_TAG: repr(accuracy), DATASET_TAG: dataset or self.data},
        )
        return str(version.version)

    def alias(self, alias: str) -> str | None:
        """The version `alias` points at, as MLflow answers it."""
        found = self.client.get_registered_model(self.name).aliases.get(alias)
        return None if found is None else str(found)


@pytest.fixture(scope="session")
def registry_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    mlflow_client(uri).search_registered_models()  # creates the schema once
    return uri


@pytest.fixture
def registered(registry_store: str) -> RegisteredModel:
    client = mlflow_client(registry_store)
    name = f"m-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    return RegisteredModel(registry_store, client, name)
