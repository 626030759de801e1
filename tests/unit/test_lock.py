"""The promotion lock on a local sqlite store: released after use, waited for, broken when stale."""

from __future__ import annotations

import time

import pytest
from mlflow.exceptions import MlflowException

from kdflow.errors import RegistryError
from kdflow.mlflow.lock import LOCK_SUFFIX, promotion_lock


def test_the_promotion_lock_is_released_after_use(registered):
    client, name = registered.client, registered.name
    with promotion_lock(client, name, registered.policy):
        assert client.get_registered_model(name + LOCK_SUFFIX)
    with pytest.raises(MlflowException, match="not found"):
        client.get_registered_model(name + LOCK_SUFFIX)


def test_a_held_lock_makes_a_second_writer_wait_then_fail_with_the_holder(registered):
    client, name, policy = registered.client, registered.name, registered.policy
    with promotion_lock(client, name, policy) as owner:
        started = time.monotonic()
        with pytest.raises(RegistryError) as caught:
            with promotion_lock(client, name, policy):
                pass
        assert time.monotonic() - started >= policy.lock_wait_s
    message = str(caught.value)
    assert message.startswith(f"promotion lock '{name}.kdflow-lock' is held by {owner}")
    assert message.endswith(f"delete the registered model '{name}.kdflow-lock' and retry")


def test_a_lock_left_by_a_dead_process_is_broken_after_it_expires(registered):
    client, name = registered.client, registered.name
    client.create_registered_model(
        name + LOCK_SUFFIX,
        tags={"kdflow.lock_owner": "gone:1:x", "kdflow.lock_expires": f"{time.time() - 1:.3f}"},
    )
    with promotion_lock(client, name, registered.policy) as owner:
        holder = client.get_registered_model(name + LOCK_SUFFIX).tags
        assert holder["kdflow.lock_owner"] == owner != "gone:1:x"
