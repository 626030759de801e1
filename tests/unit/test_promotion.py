"""Moving `champion` on a local sqlite store: the promotion rules, promote, rollback.

Versions are created directly (no artifacts), which is all the alias logic reads.
"""

from __future__ import annotations

import json

import pytest

from kdflow.errors import RegistryError
from kdflow.mlflow.promotion import auto_promote, promote, rollback


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
