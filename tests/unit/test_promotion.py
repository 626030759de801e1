"""Moving `champion` on a local sqlite store: the promotion rules, promote, rollback.

Versions are created directly (no artifacts), which is all the alias logic reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from kdflow.errors import RegistryError
from kdflow.mlflow import promotion
from kdflow.mlflow.lock import LOCK_SUFFIX, LockLost, promotion_lock
from kdflow.mlflow.promotion import auto_promote, promote, restore_alias, rollback

HISTORY = "kdflow.champion_history"


def promote_after_run(registered, version, accuracy, seen=None, dataset=None, moved=None):
    """What a registration with auto promotion does once `version` is registered."""
    summary = {"champion_seen": seen, "student": {"accuracy": accuracy},
               "dataset": {"sha256": dataset or registered.data}}
    return auto_promote(registered.client, registered.policy, registered.name, version,
                        summary, {} if moved is None else moved)


# ------------------------------------------------------------------ after a registration


def test_the_first_version_becomes_champion(registered):
    v1 = registered.add_version(0.9)
    moved: dict[str, str | None] = {}
    assert promote_after_run(registered, v1, 0.9, moved=moved) == {
        "promoted": True, "detail": "first champion"}
    assert registered.alias("champion") == v1
    assert moved == {"champion": None}  # what a failed registration puts back


def test_a_version_gated_against_the_current_champion_replaces_it(registered):
    v1, v2 = registered.add_version(0.95), registered.add_version(0.945)
    promote_after_run(registered, v1, 0.95)
    # v2 is a bit worse but within the regression margin its gates allowed: it replaces v1.
    moved: dict[str, str | None] = {}
    result = promote_after_run(registered, v2, 0.945, seen=int(v1), moved=moved)
    assert result["detail"] == f"replaces v{v1}" and moved == {"champion": v1}
    assert registered.alias("champion") == v2
    client, name = registered.client, registered.name
    assert client.get_model_version(name, v2).tags["kdflow.previous_champion"] == v1
    history = client.get_registered_model(name).tags["kdflow.champion_history"]
    assert json.loads(history) == [int(v1), int(v2)]


def test_a_run_does_not_replace_a_better_champion_that_appeared_during_it(registered):
    v1, v2, v3 = (registered.add_version(a) for a in (0.80, 0.95, 0.90))
    promote_after_run(registered, v1, 0.80)
    promote_after_run(registered, v2, 0.95, seen=int(v1))  # the other run, first to finish
    result = promote_after_run(registered, v3, 0.90, seen=int(v1))
    assert not result["promoted"]
    assert result["detail"] == (
        f"champion moved to v{v2} during this run and is at least as accurate (0.9500 vs 0.9000)"
    )
    assert registered.alias("champion") == v2


def test_a_run_replaces_a_worse_champion_that_appeared_during_it(registered):
    v1, v2, v3 = (registered.add_version(a) for a in (0.80, 0.90, 0.95))
    promote_after_run(registered, v1, 0.80)
    promote_after_run(registered, v2, 0.90, seen=int(v1))
    assert promote_after_run(registered, v3, 0.95, seen=int(v1))["promoted"]
    assert registered.alias("champion") == v3


def test_a_champion_tested_on_other_data_is_left_for_a_person_to_judge(registered):
    v1 = registered.add_version(0.80, dataset="b" * 64)
    v2 = registered.add_version(0.99)
    promote_after_run(registered, v1, 0.80, dataset="b" * 64)
    result = promote_after_run(registered, v2, 0.99, seen=None)
    assert not result["promoted"]
    assert f"run `kdflow promote {registered.name} {v2}` if this one is better" in result["detail"]
    assert registered.alias("champion") == v1


def test_a_run_whose_champion_move_fails_puts_it_back_itself(registered, monkeypatch):
    v1, v2 = registered.add_version(0.90), registered.add_version(0.95)
    promote_after_run(registered, v1, 0.90)
    before = state(registered, v2)
    fail_writing(monkeypatch, "set_registered_model_tag", HISTORY, lands=False)
    moved: dict[str, str | None] = {}
    with pytest.raises(RegistryError, match="^could not record the champion history"):
        promote_after_run(registered, v2, 0.95, seen=int(v1), moved=moved)
    assert state(registered, v2) == before
    # Undone under the lock: nothing left for the registration's own undo to put back.
    assert moved == {}


# ------------------------------------------------------------------ failures, injected


def state(registered, version):
    """What a champion move writes: the aliases, the history, the version's previous tag."""
    client, name = registered.client, registered.name
    model = client.get_registered_model(name)
    aliases = {alias: str(v) for alias, v in (model.aliases or {}).items()}
    return (aliases, (model.tags or {}).get(HISTORY),
            client.get_model_version(name, version).tags.get("kdflow.previous_champion"))


def fail_writing(monkeypatch, method, key, lands):
    """Make MlflowClient.`method` fail whenever it writes `key` (an alias or a tag key): the
    server refuses it (lands=False), or it lands and the answer is lost (lands=True). Writes
    that put the old value back go through."""
    real = getattr(MlflowClient, method)
    move: list[str] = []  # the value the move writes; any other value puts the old one back

    def flaky(self, name, *args):
        if key not in args[:-1] or move and args[-1] != move[0]:
            return real(self, name, *args)
        move[:] = [args[-1]]
        if lands:
            real(self, name, *args)
        raise MlflowException("the server went away", error_code="INTERNAL_ERROR")

    monkeypatch.setattr(MlflowClient, method, flaky)


# ------------------------------------------------------------------------------ by hand


def test_promote_then_rollback_walk_the_champion_history(registered):
    store, name, policy = registered.store, registered.name, registered.policy
    v1, v2, v3 = (registered.add_version(a) for a in (0.9, 0.91, 0.92))
    for version in (v1, v2, v3):
        promote(store, name, version, policy)
    assert rollback(store, name, policy) == {"name": name, "champion": int(v2),
                                             "previous": int(v3)}
    assert rollback(store, name, policy)["champion"] == int(v1)
    assert registered.alias("champion") == v1
    client = registered.client
    assert "kdflow.rolled_back" in client.get_model_version(name, v3).tags
    assert json.loads(client.get_registered_model(name).tags["kdflow.last_rollback"])[
        "from"] == int(v2)
    with pytest.raises(RegistryError, match=f"^no earlier champion of {name} is recorded"):
        rollback(store, name, policy)


def test_rollback_skips_a_deleted_version(registered):
    store, name, policy = registered.store, registered.name, registered.policy
    v1, v2, v3 = (registered.add_version(a) for a in (0.9, 0.91, 0.92))
    for version in (v1, v2, v3):
        promote(store, name, version, policy)
    registered.client.delete_model_version(name, v2)
    assert rollback(store, name, policy)["champion"] == int(v1)


def test_promoting_the_champion_again_changes_nothing(registered):
    v1 = registered.add_version(0.9)
    promote(registered.store, registered.name, v1, registered.policy)
    assert promote(registered.store, registered.name, v1, registered.policy)["changed"] is False


def test_promoting_a_missing_version_says_how_to_list_them(registered):
    name = registered.name
    with pytest.raises(RegistryError, match=(
        f"^{name} has no version 4; `kdflow models list {name}` lists them$"
    )):
        promote(registered.store, name, 4, registered.policy)


def test_rollback_without_a_champion_says_so(registered):
    name = registered.name
    with pytest.raises(RegistryError, match=f"^{name} has no champion to roll back$"):
        rollback(registered.store, name, registered.policy)


@pytest.mark.parametrize("method, key, lands", [
    ("set_registered_model_alias", "champion", False),  # the alias write is refused
    ("set_registered_model_alias", "champion", True),  # it lands, its answer is lost
    ("set_model_version_tag", "kdflow.previous_champion", True),  # after the alias moved
    ("set_registered_model_tag", HISTORY, False),  # the last write
])
def test_a_failed_promote_leaves_history_and_aliases_as_they_were(
    registered, monkeypatch, method, key, lands
):
    store, name, policy = registered.store, registered.name, registered.policy
    v1, v2 = registered.add_version(0.9), registered.add_version(0.91)
    promote(store, name, v1, policy)
    before = state(registered, v2)
    assert before == ({"champion": v1}, json.dumps([int(v1)]), None)
    fail_writing(monkeypatch, method, key, lands)
    with pytest.raises(RegistryError, match="^could not "):
        promote(store, name, v2, policy)
    assert state(registered, v2) == before


def test_rollback_lands_only_on_a_former_champion(registered, monkeypatch):
    store, name, policy = registered.store, registered.name, registered.policy
    v1, v2, v3 = (registered.add_version(a) for a in (0.9, 0.91, 0.92))
    promote(store, name, v1, policy)
    promote(store, name, v2, policy)
    with monkeypatch.context() as patched:  # v3's promotion fails: v3 never was champion
        fail_writing(patched, "set_registered_model_alias", "champion", lands=False)
        with pytest.raises(RegistryError):
            promote(store, name, v3, policy)
    registered.add_version(0.99)  # v4: newer, never champion either
    assert rollback(store, name, policy)["champion"] == int(v1)
    assert json.loads(registered.client.get_registered_model(name).tags[HISTORY]) == [int(v1)]


def test_rollback_without_a_former_champion_says_how_to_pick_one(registered, monkeypatch):
    store, name, policy, client = (registered.store, registered.name, registered.policy,
                                   registered.client)
    v1, v2 = registered.add_version(0.9), registered.add_version(0.91)
    promote(store, name, v1, policy)
    with monkeypatch.context() as patched:  # v2's promotion fails: v1 is the only champion
        fail_writing(patched, "set_registered_model_alias", "champion", lands=True)
        with pytest.raises(RegistryError):
            promote(store, name, v2, policy)
    # Not even a version a tag names as previous champion, when the history does not.
    client.set_model_version_tag(name, v1, "kdflow.previous_champion", v2)
    with pytest.raises(RegistryError, match=(
        f"^no earlier champion of {name} is recorded; pick one with `kdflow models list "
        f"{name}` and run `kdflow promote {name} VERSION`$"
    )):
        rollback(store, name, policy)
    assert registered.alias("champion") == v1
    assert "kdflow.rolled_back" not in client.get_model_version(name, v1).tags


def test_a_failed_rollback_leaves_the_champion_its_tags_and_history(registered, monkeypatch):
    store, name, policy, client = (registered.store, registered.name, registered.policy,
                                   registered.client)
    v1, v2 = registered.add_version(0.9), registered.add_version(0.91)
    promote(store, name, v1, policy)
    promote(store, name, v2, policy)
    tags_before = client.get_registered_model(name).tags
    fail_writing(monkeypatch, "set_registered_model_tag", "kdflow.last_rollback", lands=True)
    with pytest.raises(RegistryError, match="^could not record the rollback"):
        rollback(store, name, policy)
    assert registered.alias("champion") == v2
    assert client.get_registered_model(name).tags == tags_before
    assert "kdflow.rolled_back" not in client.get_model_version(name, v2).tags


def test_a_promote_slower_than_its_lock_writes_nothing_after_another_took_over(
    registered, monkeypatch
):
    store, name, client = registered.store, registered.name, registered.client
    v1, v2 = registered.add_version(0.9), registered.add_version(0.91)
    promote(store, name, v1, registered.policy)
    before = state(registered, v2)
    read_champion = promotion.alias_target
    with contextlib.ExitStack() as later:

        def slow_read(*args):
            found = read_champion(*args)
            time.sleep(1.1)  # longer than the lock's lifetime: B breaks it and takes it
            later.enter_context(promotion_lock(client, name, registered.policy))
            return found

        monkeypatch.setattr(promotion, "alias_target", slow_read)
        with pytest.raises(LockLost, match=(
            f"^lost the promotion lock '{name}{LOCK_SUFFIX}' before this run could set "
            f"{name}@champion: it was broken as expired and is now held by "
        )):
            promote(store, name, v2, dataclasses.replace(registered.policy, lock_ttl_s=1.0))
        assert state(registered, v2) == before


def test_a_failed_registration_puts_champion_back_under_the_lock_only_if_still_its(registered):
    client, name, policy = registered.client, registered.name, registered.policy
    v1, v2, v3 = (registered.add_version(a) for a in (0.9, 0.91, 0.92))
    promote(registered.store, name, v1, policy)
    client.set_registered_model_alias(name, "champion", v2)  # the failed registration's move
    restore_alias(client, policy, name, "champion", v2, v1)
    assert registered.alias("champion") == v1
    client.set_registered_model_alias(name, "champion", v3)  # another writer's move since
    restore_alias(client, policy, name, "champion", v2, v1)
    assert registered.alias("champion") == v3
    with promotion_lock(client, name, policy):  # it waits for the lock like any writer
        with pytest.raises(RegistryError, match="is held by"):
            restore_alias(client, policy, name, "champion", v3, None)
    restore_alias(client, policy, name, "champion", v3, None)
    assert registered.alias("champion") is None
