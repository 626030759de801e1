"""The promotion lock: one writer at a time moves a model's `champion` alias.

The lock is a registered model named `<name>.kdflow-lock`, which only one writer can create
(the server's unique constraint on model names is the test-and-set). It carries its owner
and expiry; a lock past its expiry (its holder died) is broken.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from kdflow.errors import RegistryError
from kdflow.mlflow.client import (
    CLEANUP,
    EXISTS,
    LOCK_EXPIRES_TAG,
    LOCK_OWNER_TAG,
    MISSING,
    RetryPolicy,
    call,
    error_code,
    short_error,
)

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".kdflow-lock"


@contextlib.contextmanager
def promotion_lock(client: Any, model_name: str, policy: RetryPolicy) -> Iterator[str]:
    """Hold `<model_name>.kdflow-lock` (a registered model only one writer can create)."""
    from mlflow.exceptions import MlflowException

    lock = model_name + LOCK_SUFFIX
    owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + policy.lock_wait_s
    while True:
        expires = time.time() + policy.lock_ttl_s
        try:
            call(policy, "take the promotion lock", client.create_registered_model, lock,
                 tags={LOCK_OWNER_TAG: owner, LOCK_EXPIRES_TAG: f"{expires:.3f}"},
                 description=f"kdflow promotion lock for {model_name}; deleted when released")
            break
        except MlflowException as exc:
            if error_code(exc) not in EXISTS:
                raise
        holder = _lock_holder(client, policy, lock)
        if holder is None:
            continue  # released between our create and our read
        if holder[0] == owner:
            break  # our own create landed, its answer was lost
        if time.time() > holder[1]:
            log.warning("breaking promotion lock %s held by %s: it expired", lock, holder[0])
            with contextlib.suppress(MlflowException):
                call(policy, "break a stale promotion lock", client.delete_registered_model,
                     lock)
            continue
        if time.monotonic() > deadline:
            raise RegistryError(
                f"promotion lock {lock!r} is held by {holder[0]} (expires "
                f"{datetime.fromtimestamp(holder[1], UTC):%H:%M:%S} UTC); if no kdflow "
                f"registration is running, delete the registered model {lock!r} and retry"
            )
        time.sleep(random.uniform(0.2, 0.6))
    try:
        yield owner
    finally:
        try:
            call(CLEANUP, "release the promotion lock", client.delete_registered_model, lock)
        except Exception as exc:  # it expires after lock_ttl_s anyway
            log.warning("could not release promotion lock %s (%s); it expires in %.0f s",
                        lock, short_error(exc), policy.lock_ttl_s)


def _lock_holder(client: Any, policy: RetryPolicy, lock: str) -> tuple[str, float] | None:
    from mlflow.exceptions import MlflowException

    try:
        model = call(policy, "read the promotion lock", client.get_registered_model, lock)
    except MlflowException as exc:
        if error_code(exc) in MISSING:
            return None
        raise
    tags = model.tags or {}
    return tags.get(LOCK_OWNER_TAG, "?"), float(tags.get(LOCK_EXPIRES_TAG, 0))

