"""The promotion lock: one writer at a time moves a model's `champion` alias.

The lock is a registered model named `<name>.kdflow-lock`, which only one writer can create
(the server's unique constraint on model names is the test-and-set). It carries its owner (a
token unique to this holder, the fencing token) and its expiry; a lock past its expiry (its
holder died, or is slower than the lock's lifetime) is broken by the next writer.

The owner tag makes the lock safe against a holder that outlives it:

* **Writes check it.** `promotion_lock` yields a `LockHold`; its `check()` re-reads the lock and
  raises RegistryError unless the lock still carries this holder's token with at least a
  quarter of its lifetime left. `kdflow.mlflow.promotion` calls it before every write it makes
  under the lock (and before every write that undoes one), so a holder whose lock was broken,
  or is about to be, writes nothing more.
* **Release checks it.** Releasing deletes the lock only while it is still this holder's and
  not close to expiring; otherwise it is left in place (another writer's lock, or one that
  expires anyway), never deleted from under its new holder.
* **Breaking is a test-and-set too.** MLflow has no conditional delete, so to break an
  expired lock a writer first creates `<lock>.break-<id of the expired holder>`: of several
  writers finding the same expired lock, exactly one creates it. That one re-reads the lock
  and deletes it only if it still carries the expired holder's owner and expiry, then removes
  its marker; everyone then takes the lock through the normal create. Nobody else deletes the
  lock in between (its expired holder no longer releases it; other breakers lost the create),
  so breaking never removes a newer holder's lock. A marker left by a breaker that died is
  itself broken the same way once it expires.

Expiry is wall-clock time (`time.time()`) compared across the machines that take the lock;
the quarter-lifetime margin also covers modest clock skew between them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

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
BREAK_INFIX = ".break-"
"""`<lock>.break-<id>`: the marker whose creation wins the right to break an expired lock."""
MARGIN_FRACTION = 0.25
"""A holder stops writing (and does not delete its lock) when less than this fraction of the
lock's lifetime is left: a writer breaks the lock only once it has expired."""


class _Holder(NamedTuple):
    """What a lock's tags say: who holds it, and until when (seconds since the epoch)."""

    owner: str
    expires: float


class LockLost(RegistryError):
    """This holder's promotion lock expired or was broken: it must not write any more."""


@dataclass(frozen=True)
class LockHold:
    """A held promotion lock: its registered model, and this holder's token on it."""

    client: Any
    policy: RetryPolicy
    name: str
    """The lock's registered model, `<model>.kdflow-lock`."""
    owner: str
    """This holder's token (host:pid:random), the lock's owner tag while it is held."""

    def check(self, what: str = "write to the registry") -> None:
        """Raise LockLost (a RegistryError) unless the lock is still this holder's, with a
        quarter of its lifetime to spare.

        Call it right before each write made under the lock: a holder slower than the
        lock's lifetime has had it broken (and maybe re-taken), and must not write.
        """
        holder = _lock_holder(self.client, self.policy, self.name)
        if holder is None:
            reason = "it is gone (broken as expired, and not re-taken yet)"
        elif holder.owner != self.owner:
            reason = f"it was broken as expired and is now held by {holder.owner}"
        elif time.time() > holder.expires - _margin(self.policy):
            left = holder.expires - time.time()
            reason = (f"it expires in {left:.0f} s" if left > 0 else "it has expired") + (
                " and may be broken by another writer at any moment")
        else:
            return
        raise LockLost(
            f"lost the promotion lock {self.name!r} before this run could {what}: {reason}. "
            f"This run held it longer than its {self.policy.lock_ttl_s:.0f} s lifetime "
            "(RetryPolicy.lock_ttl_s); it wrote nothing more. Check the champion with "
            "`kdflow models list` and run it again"
        )


@contextlib.contextmanager
def promotion_lock(client: Any, model_name: str, policy: RetryPolicy) -> Iterator[LockHold]:
    """Hold `<model_name>.kdflow-lock` (a registered model only one writer can create).

    Yields the `LockHold`; call its `check()` right before each write.
    """
    lock = model_name + LOCK_SUFFIX
    owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex}"
    deadline = time.monotonic() + policy.lock_wait_s
    while True:
        taken, holder = _take(client, policy, lock, owner,
                              f"kdflow promotion lock for {model_name}; deleted when released")
        if taken:
            break
        if holder is None:
            continue  # released between our create and our read
        if time.time() > holder.expires:
            log.warning("breaking promotion lock %s held by %s: it expired", lock, holder.owner)
            if _break(client, policy, lock, holder, owner):
                continue
        if time.monotonic() > deadline:
            raise RegistryError(
                f"promotion lock {lock!r} is held by {holder.owner} (expires "
                f"{datetime.fromtimestamp(holder.expires, UTC):%H:%M:%S} UTC); if no kdflow "
                f"registration is running, delete the registered model {lock!r} and retry"
            )
        time.sleep(random.uniform(0.2, 0.6))
    try:
        yield LockHold(client, policy, lock, owner)
    finally:
        _release(client, policy, lock, owner)


def _take(
    client: Any, policy: RetryPolicy, name: str, owner: str, description: str
) -> tuple[bool, _Holder | None]:
    """Create the lock `name` for `owner`: (True, None) when `owner` holds it now, else
    (False, its holder), with no holder when it vanished between our create and our read."""
    from mlflow.exceptions import MlflowException

    expires = time.time() + policy.lock_ttl_s
    try:
        call(policy, "take the promotion lock", client.create_registered_model, name,
             tags={LOCK_OWNER_TAG: owner, LOCK_EXPIRES_TAG: f"{expires:.3f}"},
             description=description)
        return True, None
    except MlflowException as exc:
        if error_code(exc) not in EXISTS:
            raise
    holder = _lock_holder(client, policy, name)
    if holder is not None and holder.owner == owner:
        return True, None  # our own create landed, its answer was lost
    return False, holder


def _break(client: Any, policy: RetryPolicy, name: str, seen: _Holder, owner: str) -> bool:
    """Delete the expired lock `name` if it still is `seen` (see the module docstring).

    Returns True when the lock is gone (taking it can be tried at once), False when another
    writer is breaking it or it is no longer the expired one.
    """
    from mlflow.exceptions import MlflowException

    generation = hashlib.sha256(f"{seen.owner}|{seen.expires:.3f}".encode()).hexdigest()[:12]
    marker = name + BREAK_INFIX + generation
    won, marker_holder = _take(client, policy, marker, owner,
                               f"kdflow: breaking the expired lock {name}; deleted when done")
    if not won:
        if marker_holder is not None and time.time() > marker_holder.expires:
            # The writer breaking it died half-way: break its marker the same way.
            log.warning("breaking %s left by %s: it expired", marker, marker_holder.owner)
            _break(client, policy, marker, marker_holder, owner)
        return False
    try:
        if _lock_holder(client, policy, name) != seen:
            return False  # released, or already broken and re-taken: not ours to break
        try:
            call(policy, "break a stale promotion lock", client.delete_registered_model, name)
        except MlflowException as exc:
            if error_code(exc) not in MISSING:
                raise
        return True
    finally:
        _release(client, policy, marker, owner)


def _release(client: Any, policy: RetryPolicy, name: str, owner: str) -> None:
    """Delete the lock `name` if it is still `owner`'s and not about to expire (best effort)."""
    try:
        holder = _lock_holder(client, CLEANUP, name)
        if holder is None:
            log.warning("promotion lock %s was gone at release: this run held it longer than "
                        "its %.0f s lifetime and it was broken", name, policy.lock_ttl_s)
        elif holder.owner != owner:
            log.warning("promotion lock %s is now held by %s: this run held it longer than its "
                        "%.0f s lifetime and it was broken; leaving the new holder's lock",
                        name, holder.owner, policy.lock_ttl_s)
        elif time.time() > holder.expires - _margin(policy):
            log.warning("promotion lock %s expires in %.0f s: leaving it to expire rather than "
                        "risk deleting it from under a writer that breaks it",
                        name, max(0.0, holder.expires - time.time()))
        else:
            call(CLEANUP, "release the promotion lock", client.delete_registered_model, name)
    except Exception as exc:  # it expires after lock_ttl_s anyway
        log.warning("could not release promotion lock %s (%s); it expires in %.0f s",
                    name, short_error(exc), policy.lock_ttl_s)


def _margin(policy: RetryPolicy) -> float:
    return policy.lock_ttl_s * MARGIN_FRACTION


def _lock_holder(client: Any, policy: RetryPolicy, lock: str) -> _Holder | None:
    from mlflow.exceptions import MlflowException

    try:
        model = call(policy, "read the promotion lock", client.get_registered_model, lock)
    except MlflowException as exc:
        if error_code(exc) in MISSING:
            return None
        raise
    tags = model.tags or {}
    try:
        expires = float(tags.get(LOCK_EXPIRES_TAG, 0))
    except ValueError:
        expires = 0.0  # unreadable: treated as expired
    return _Holder(tags.get(LOCK_OWNER_TAG, "?"), expires)
