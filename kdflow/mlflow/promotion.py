"""Moving `champion`: after a registration (auto), by hand (`promote`), and back (`rollback`).

Every move happens under the promotion lock (`kdflow.mlflow.lock`). Under the lock a run
re-reads the champion: if it is still the version the run's gates were evaluated against,
the new version is promoted; if another run moved it meanwhile, the new version is promoted
only when its test accuracy (tag `kdflow.test_accuracy`) on the same test data (tag
`kdflow.dataset_sha256`) is higher. Two runs finishing together therefore both register,
and `champion` ends on the better one whichever takes the lock first.

Every champion move appends to the registered model's tag `kdflow.champion_history`;
`rollback` walks it back and tags the demoted version `kdflow.rolled_back`.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from kdflow.errors import RegistryError
from kdflow.mlflow.client import (
    ACCURACY_TAG,
    DATASET_TAG,
    HISTORY_TAG,
    LAST_ROLLBACK_TAG,
    PREVIOUS_TAG,
    ROLLED_BACK_TAG,
    RetryPolicy,
    call,
    http_settings,
    mlflow_client,
    registry_errors,
)
from kdflow.mlflow.lock import promotion_lock
from kdflow.mlflow.versions import (
    CHAMPION,
    alias_target,
    require_version,
    version_by_alias,
    version_exists,
)

log = logging.getLogger(__name__)

HISTORY_LENGTH = 50
EPS = 1e-9


def _history(client: Any, policy: RetryPolicy, model_name: str) -> list[int]:
    model = call(policy, f"read {model_name}", client.get_registered_model, model_name)
    try:
        return [int(v) for v in json.loads((model.tags or {}).get(HISTORY_TAG, "[]"))]
    except (ValueError, TypeError):
        return []


def _move_champion(
    client: Any,
    policy: RetryPolicy,
    model_name: str,
    version: str,
    previous: str | None,
    history: list[int],
) -> None:
    """Point `champion` at `version` (call under the promotion lock).

    The alias moves last: when a tag write fails, the champion has not moved yet. A
    history entry for a move that then failed is skipped by `rollback` (it checks that
    a version still exists and is not the current champion).
    """
    if previous is not None and previous != version:
        call(policy, "record the previous champion", client.set_model_version_tag,
             model_name, version, PREVIOUS_TAG, previous)
    history = (history + [int(version)])[-HISTORY_LENGTH:]
    call(policy, "record the champion history", client.set_registered_model_tag,
         model_name, HISTORY_TAG, json.dumps(history))
    call(policy, f"set {model_name}@{CHAMPION}", client.set_registered_model_alias,
         model_name, CHAMPION, version)


def auto_promote(
    client: Any,
    policy: RetryPolicy,
    model_name: str,
    version: str,
    summary: dict[str, Any],
    moved: dict[str, str | None],
) -> dict[str, Any]:
    """Move `champion` to `version` unless a better champion appeared since evaluation.

    `moved` (alias -> the version it held before) gets `champion`'s entry before it moves,
    for a registration that fails later to put it back.
    """
    seen = summary.get("champion_seen")
    seen = None if seen is None else str(seen)
    accuracy = float(summary["student"]["accuracy"])
    dataset = summary["dataset"]["sha256"]
    with promotion_lock(client, model_name, policy):
        current = call(policy, f"read {model_name}@{CHAMPION}", version_by_alias, client,
                       model_name, CHAMPION)
        current_v = None if current is None else str(current.version)
        if current_v == version:
            return {"promoted": True, "detail": "already champion"}
        if current is not None and current_v != seen:
            tags = current.tags or {}
            theirs = tags.get(ACCURACY_TAG)
            if tags.get(DATASET_TAG) != dataset or theirs is None:
                return {
                    "promoted": False,
                    "detail": f"champion moved to v{current_v} during this run and was tested "
                    f"on other data; compare them and run `kdflow promote {model_name} "
                    f"{version}` if this one is better",
                }
            if accuracy <= float(theirs) + EPS:
                return {
                    "promoted": False,
                    "detail": f"champion moved to v{current_v} during this run and is at least "
                    f"as accurate ({float(theirs):.4f} vs {accuracy:.4f})",
                }
        moved[CHAMPION] = current_v
        _move_champion(client, policy, model_name, version, current_v,
                       _history(client, policy, model_name))
    detail = "first champion" if current_v is None else f"replaces v{current_v}"
    return {"promoted": True, "detail": detail}


def promote(
    tracking_uri: str, model_name: str, version: int | str, policy: RetryPolicy | None = None
) -> dict[str, Any]:
    """Point `champion` at `version` by hand; the old champion is kept for rollback."""
    policy = policy or RetryPolicy()
    client = mlflow_client(tracking_uri)
    version = str(version)
    with http_settings.applied(policy), registry_errors(tracking_uri, model_name):
        require_version(client, policy, model_name, version)
        with promotion_lock(client, model_name, policy):
            current = alias_target(client, policy, model_name, CHAMPION)
            if current == version:
                return {"name": model_name, "champion": int(version), "previous": None,
                        "changed": False}
            _move_champion(client, policy, model_name, version, current,
                           _history(client, policy, model_name))
    log.info("%s@champion: v%s -> v%s", model_name, current, version)
    return {"name": model_name, "champion": int(version),
            "previous": None if current is None else int(current), "changed": True}


def rollback(
    tracking_uri: str, model_name: str, policy: RetryPolicy | None = None
) -> dict[str, Any]:
    """Point `champion` back at the previous champion and tag the demoted version."""
    policy = policy or RetryPolicy()
    client = mlflow_client(tracking_uri)
    with http_settings.applied(policy), registry_errors(tracking_uri, model_name):
        with promotion_lock(client, model_name, policy):
            current = call(policy, f"read {model_name}@{CHAMPION}", version_by_alias, client,
                           model_name, CHAMPION)
            if current is None:
                raise RegistryError(f"{model_name} has no champion to roll back")
            current_v = str(current.version)
            history = _history(client, policy, model_name)
            while history and str(history[-1]) == current_v:
                history.pop()
            target = None
            while history and target is None:
                candidate = str(history.pop())
                if candidate != current_v and version_exists(client, policy, model_name, candidate):
                    target = candidate
            if target is None:
                fallback = (current.tags or {}).get(PREVIOUS_TAG)
                if fallback and version_exists(client, policy, model_name, fallback):
                    target = fallback
            if target is None:
                raise RegistryError(
                    f"no earlier champion of {model_name} is recorded; pick one with "
                    f"`kdflow models list {model_name}` and run `kdflow promote {model_name} "
                    "VERSION`"
                )
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            call(policy, "tag the demoted version", client.set_model_version_tag, model_name,
                 current_v, ROLLED_BACK_TAG, stamp)
            call(policy, f"set {model_name}@{CHAMPION}", client.set_registered_model_alias,
                 model_name, CHAMPION, target)
            call(policy, "record the rollback", client.set_registered_model_tag, model_name,
                 LAST_ROLLBACK_TAG,
                 json.dumps({"from": int(current_v), "to": int(target), "at": stamp}))
            call(policy, "record the champion history", client.set_registered_model_tag,
                 model_name, HISTORY_TAG, json.dumps(history + [int(target)]))
    log.info("%s@champion rolled back: v%s -> v%s", model_name, current_v, target)
    return {"name": model_name, "champion": int(target), "previous": int(current_v)}

