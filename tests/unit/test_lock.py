"""The promotion lock on a local sqlite store: released after use, waited for, broken when stale,
and checked against its owner (the fencing token) by its holder's release and writes."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time

import pytest
from mlflow.exceptions import MlflowException

from kdflow.errors import RegistryError
from kdflow.mlflow.client import mlflow_client
from kdflow.mlflow.lock import BREAK_INFIX, LOCK_SUFFIX, LockLost, promotion_lock

OWNER, EXPIRES = "kdflow.lock_owner", "kdflow.lock_expires"


def stale_lock(client, name, owner="gone:1:x"):
    """A lock left by a process that died: expired a second ago. Returns its expiry tag."""
    expires = f"{time.time() - 1:.3f}"
    client.create_registered_model(name, tags={OWNER: owner, EXPIRES: expires})
    return expires


def test_the_promotion_lock_is_released_after_use(registered):
    client, name = registered.client, registered.name
    with promotion_lock(client, name, registered.policy):
        assert client.get_registered_model(name + LOCK_SUFFIX)
    with pytest.raises(MlflowException, match="not found"):
        client.get_registered_model(name + LOCK_SUFFIX)


def test_a_held_lock_makes_a_second_writer_wait_then_fail_with_the_holder(registered):
    client, name, policy = registered.client, registered.name, registered.policy
    with promotion_lock(client, name, policy) as hold:
        started = time.monotonic()
        with pytest.raises(RegistryError) as caught:
            with promotion_lock(client, name, policy):
                pass
        assert time.monotonic() - started >= policy.lock_wait_s
    message = str(caught.value)
    assert message.startswith(f"promotion lock '{name}.kdflow-lock' is held by {hold.owner}")
    assert message.endswith(f"delete the registered model '{name}.kdflow-lock' and retry")


def test_a_lock_left_by_a_dead_process_is_broken_after_it_expires(registered):
    client, name = registered.client, registered.name
    client.create_registered_model(
        name + LOCK_SUFFIX,
        tags={"kdflow.lock_owner": "gone:1:x", "kdflow.lock_expires": f"{time.time() - 1:.3f}"},
    )
    with promotion_lock(client, name, registered.policy) as hold:
        holder = client.get_registered_model(name + LOCK_SUFFIX).tags
        assert holder["kdflow.lock_owner"] == hold.owner != "gone:1:x"
        hold.check()  # a broken lock re-taken through the normal create is held


def test_a_holder_that_outlives_its_lock_leaves_the_next_holders_lock_and_cannot_write(
    registered,
):
    client, name, policy = registered.client, registered.name, registered.policy
    lock = name + LOCK_SUFFIX
    with contextlib.ExitStack() as later:
        with promotion_lock(client, name, dataclasses.replace(policy, lock_ttl_s=1.0)) as a:
            a.check("move champion")  # held, with time to spare
            time.sleep(1.1)  # A is slower than its lock's lifetime...
            b = later.enter_context(promotion_lock(client, name, policy))  # ...B breaks it
            assert b.owner != a.owner
            with pytest.raises(LockLost) as lost:
                a.check(f"set {name}@champion")
            assert str(lost.value).startswith(
                f"lost the promotion lock '{lock}' before this run could set {name}@champion: "
                f"it was broken as expired and is now held by {b.owner}. This run held it "
                "longer than its 1 s lifetime")
            assert isinstance(lost.value, RegistryError)
        # A's release left B's lock in place, and B still holds it.
        assert client.get_registered_model(lock).tags[OWNER] == b.owner
        b.check("move champion")
    with pytest.raises(MlflowException, match="not found"):
        client.get_registered_model(lock)  # B's release deleted its own lock


def test_a_holder_past_its_expiry_stops_writing_before_anyone_breaks_the_lock(registered):
    client, name = registered.client, registered.name
    with promotion_lock(client, name, dataclasses.replace(registered.policy,
                                                          lock_ttl_s=1.0)) as hold:
        time.sleep(0.8)  # under a quarter of its lifetime left: a breaker may be about to act
        with pytest.raises(LockLost, match="may be broken by another writer at any moment"):
            hold.check()
    # Its release left the lock to expire rather than race a breaker's delete.
    assert client.get_registered_model(name + LOCK_SUFFIX).tags[OWNER] == hold.owner
    with promotion_lock(client, name, registered.policy) as nxt:  # broken once expired
        nxt.check()


def test_two_writers_finding_the_same_expired_lock_do_not_both_take_it(registered):
    """C reads a dead holder's expired lock; before C acts on it, B breaks it and takes the
    lock. C must not delete B's lock: it waits for it, and fails naming B as its holder."""
    client, name, policy = registered.client, registered.name, registered.policy
    lock = name + LOCK_SUFFIX
    stale_lock(client, lock)
    slow = mlflow_client(registered.store)  # C's client: B acts in the middle of C's first read
    read = slow.get_registered_model
    taken: list = []
    with contextlib.ExitStack() as later:

        def b_acts_meanwhile(model_name):
            model = read(model_name)  # what C reads: still the dead holder's lock
            if model_name == lock and not taken:
                taken.append(later.enter_context(promotion_lock(client, name, policy)))
            return model

        slow.get_registered_model = b_acts_meanwhile
        with pytest.raises(RegistryError) as caught:
            with promotion_lock(slow, name, policy):
                pass
        (b,) = taken
        assert f"promotion lock '{lock}' is held by {b.owner} " in str(caught.value)
        assert client.get_registered_model(lock).tags[OWNER] == b.owner
        b.check()
    assert not client.search_registered_models(f"name LIKE '{lock}{BREAK_INFIX}%'")


def test_a_breaker_that_died_half_way_is_itself_broken_after_it_expires(registered):
    client, name = registered.client, registered.name
    lock = name + LOCK_SUFFIX
    expires = stale_lock(client, lock)
    generation = hashlib.sha256(f"gone:1:x|{expires}".encode()).hexdigest()[:12]
    stale_lock(client, lock + BREAK_INFIX + generation, owner="breaker:2:y")
    with promotion_lock(client, name, dataclasses.replace(registered.policy,
                                                          lock_wait_s=5.0)) as hold:
        hold.check()
    assert not client.search_registered_models(f"name LIKE '{lock}%'")
