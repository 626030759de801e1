"""Moving `champion`: after a registration (auto), by hand (`promote`), and back (`rollback`).

Every move happens under the promotion lock (`kdflow.mlflow.lock`). Under the lock a run
re-reads the champion: if it is still the version the run's gates were evaluated against,
the new version is promoted; if another run moved it meanwhile, the new version is promoted
only when its test accuracy (tag `kdflow.test_accuracy`) on the same test data (tag
`kdflow.dataset_sha256`) is higher. Two runs finishing together therefore both register,
and `champion` ends on the better one whichever takes the lock first.

Every champion move appends to the registered model's tag `kdflow.champion_history`;
`rollback` walks it back and tags the demoted version `kdflow.rolled_back`.

A move is all or nothing. Each write under the lock is preceded by a check that the lock is
still this writer's (`LockHold.check`: a writer slower than the lock's lifetime writes
nothing after another took over), and is recorded with the value it replaces. The alias
moves first and the history is written last, so the history only ever names versions that
were champion; when any write fails, the ones before it are put back, newest first, still
under the lock (and each again after a check). So `rollback` lands only on a former
champion, and a failed `promote` or `rollback` leaves aliases and history as they were.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kdflow.errors import RegistryError
from kdflow.mlflow.client import (
    ACCURACY_TAG,
    CLEANUP,
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
    short_error,
)
from kdflow.mlflow.lock import LockHold, LockLost, promotion_lock
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


def _parse_history(raw: str | None) -> list[int]:
    try:
        return [int(v) for v in json.loads(raw or "[]")]
    except (ValueError, TypeError):
        return []


@dataclass
class _Writes:
    """The writes of one champion move, made under the lock and undone together on failure."""

    client: Any
    policy: RetryPolicy
    model_name: str
    hold: LockHold
    undo: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    settled: bool = True
    """After a failure: True when nothing is left for anyone else to put back (every write
    was undone, or the lock was lost and what is there now belongs to its new holder)."""

    def alias(self, alias: str, version: str, before: str | None) -> None:
        """Point `alias` at `version`; undone by pointing it at `before` (None: removing it)."""
        name = self.model_name

        def put_back() -> None:
            if before is None:
                call(CLEANUP, f"remove {name}@{alias}", self.client.delete_registered_model_alias,
                     name, alias)
            else:
                call(CLEANUP, f"restore {name}@{alias}", self.client.set_registered_model_alias,
                     name, alias, before)

        self._write(f"set {name}@{alias}", put_back, self.client.set_registered_model_alias,
                    name, alias, version)

    def model_tag(self, what: str, key: str, value: str, before: str | None) -> None:
        """Set the registered model's tag `key`; undone by restoring `before` (None: none)."""
        name = self.model_name

        def put_back() -> None:
            if before is None:
                call(CLEANUP, f"remove {key}", self.client.delete_registered_model_tag, name, key)
            else:
                call(CLEANUP, f"restore {key}", self.client.set_registered_model_tag, name, key,
                     before)

        self._write(what, put_back, self.client.set_registered_model_tag, name, key, value)

    def version_tag(self, what: str, version: str, key: str, value: str,
                    before: str | None) -> None:
        """Set version `version`'s tag `key`; undone by restoring `before` (None: none)."""
        name = self.model_name

        def put_back() -> None:
            if before is None:
                call(CLEANUP, f"remove {key} of v{version}", self.client.delete_model_version_tag,
                     name, version, key)
            else:
                call(CLEANUP, f"restore {key} of v{version}", self.client.set_model_version_tag,
                     name, version, key, before)

        self._write(what, put_back, self.client.set_model_version_tag, name, version, key, value)

    def _write(self, what: str, put_back: Callable[[], None], fn: Callable[..., Any],
               *args: Any) -> None:
        self.hold.check(what)
        # Recorded before the call: a write whose answer is lost may still have landed.
        self.undo.append((what, put_back))
        call(self.policy, what, fn, *args)

    @contextlib.contextmanager
    def all_or_nothing(self) -> Iterator[None]:
        """On any failure inside, put back what was written (newest first), then re-raise."""
        try:
            yield
        except BaseException:
            self.settled = self._revert()
            raise

    def _revert(self) -> bool:
        while self.undo:
            what, put_back = self.undo[-1]
            try:
                self.hold.check(f"undo '{what}'")
                put_back()
            except LockLost as exc:
                log.error("%s: not undoing %s (%s): the champion is now the new lock holder's",
                          self.model_name, self._pending(), short_error(exc))
                return True
            except Exception as exc:  # the server may be down: say what is left
                log.error("%s: could not undo %s after the failure (%s); check %s@%s and its "
                          "tag %s with `kdflow models list %s`", self.model_name,
                          self._pending(), short_error(exc), self.model_name, CHAMPION,
                          HISTORY_TAG, self.model_name)
                return False
            self.undo.pop()
        return True

    def _pending(self) -> str:
        return ", ".join(f"'{what}'" for what, _ in reversed(self.undo))


def _move_champion(writes: _Writes, version: str, previous: str | None) -> None:
    """Point `champion` at `version` and record it (call under the promotion lock, inside
    `writes.all_or_nothing()`).

    The alias moves first and the history is written last: the history only ever gains a
    version once `champion` has moved to it, and a failure puts back what came before.
    """
    client, policy, name = writes.client, writes.policy, writes.model_name
    model = call(policy, f"read {name}", client.get_registered_model, name)
    history_before = (model.tags or {}).get(HISTORY_TAG)
    history = (_parse_history(history_before) + [int(version)])[-HISTORY_LENGTH:]
    writes.alias(CHAMPION, version, previous)
    if previous is not None and previous != version:
        tags = call(policy, f"read {name} version {version}", client.get_model_version, name,
                    version).tags or {}
        writes.version_tag("record the previous champion", version, PREVIOUS_TAG, previous,
                           tags.get(PREVIOUS_TAG))
    writes.model_tag("record the champion history", HISTORY_TAG, json.dumps(history),
                     history_before)


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
    for a registration that fails later to put it back. A move that fails here is undone
    here, under the lock, and then drops that entry again: it is left only when the undo
    itself could not reach the server.
    """
    seen = summary.get("champion_seen")
    seen = None if seen is None else str(seen)
    accuracy = float(summary["student"]["accuracy"])
    dataset = summary["dataset"]["sha256"]
    with promotion_lock(client, model_name, policy) as hold:
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
        writes = _Writes(client, policy, model_name, hold)
        try:
            with writes.all_or_nothing():
                _move_champion(writes, version, current_v)
        except BaseException:
            if writes.settled:
                moved.pop(CHAMPION, None)
            raise
    detail = "first champion" if current_v is None else f"replaces v{current_v}"
    return {"promoted": True, "detail": detail}


def promote(
    tracking_uri: str, model_name: str, version: int | str, policy: RetryPolicy | None = None
) -> dict[str, Any]:
    """Point `champion` at `version` by hand; the old champion is kept for rollback.

    All or nothing: when a write fails, the alias and the history are put back.
    """
    policy = policy or RetryPolicy()
    client = mlflow_client(tracking_uri)
    version = str(version)
    with http_settings.applied(policy), registry_errors(tracking_uri, model_name):
        require_version(client, policy, model_name, version)
        with promotion_lock(client, model_name, policy) as hold:
            current = alias_target(client, policy, model_name, CHAMPION)
            if current == version:
                return {"name": model_name, "champion": int(version), "previous": None,
                        "changed": False}
            writes = _Writes(client, policy, model_name, hold)
            with writes.all_or_nothing():
                _move_champion(writes, version, current)
    log.info("%s@champion: v%s -> v%s", model_name, current, version)
    return {"name": model_name, "champion": int(version),
            "previous": None if current is None else int(current), "changed": True}


def rollback(
    tracking_uri: str, model_name: str, policy: RetryPolicy | None = None
) -> dict[str, Any]:
    """Point `champion` back at the previous champion and tag the demoted version.

    The target is the latest version in the champion history that still exists and is not
    the champion: only a version that was champion, never any other. All or nothing, like
    `promote`.
    """
    policy = policy or RetryPolicy()
    client = mlflow_client(tracking_uri)
    with http_settings.applied(policy), registry_errors(tracking_uri, model_name):
        with promotion_lock(client, model_name, policy) as hold:
            current = call(policy, f"read {model_name}@{CHAMPION}", version_by_alias, client,
                           model_name, CHAMPION)
            if current is None:
                raise RegistryError(f"{model_name} has no champion to roll back")
            current_v = str(current.version)
            model = call(policy, f"read {model_name}", client.get_registered_model, model_name)
            tags = model.tags or {}
            history = _parse_history(tags.get(HISTORY_TAG))
            while history and str(history[-1]) == current_v:
                history.pop()
            target = None
            while history and target is None:
                candidate = str(history.pop())
                if candidate != current_v and version_exists(client, policy, model_name, candidate):
                    target = candidate
            if target is None:
                raise RegistryError(
                    f"no earlier champion of {model_name} is recorded; pick one with "
                    f"`kdflow models list {model_name}` and run `kdflow promote {model_name} "
                    "VERSION`"
                )
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            writes = _Writes(client, policy, model_name, hold)
            with writes.all_or_nothing():
                writes.alias(CHAMPION, target, current_v)
                writes.version_tag("tag the demoted version", current_v, ROLLED_BACK_TAG, stamp,
                                   (current.tags or {}).get(ROLLED_BACK_TAG))
                writes.model_tag("record the rollback", LAST_ROLLBACK_TAG,
                                 json.dumps({"from": int(current_v), "to": int(target),
                                             "at": stamp}),
                                 tags.get(LAST_ROLLBACK_TAG))
                writes.model_tag("record the champion history", HISTORY_TAG,
                                 json.dumps(history + [int(target)]), tags.get(HISTORY_TAG))
    log.info("%s@champion rolled back: v%s -> v%s", model_name, current_v, target)
    return {"name": model_name, "champion": int(target), "previous": int(current_v)}


def restore_alias(
    client: Any,
    policy: RetryPolicy,
    model_name: str,
    alias: str,
    version: str | None,
    before: str | None,
) -> None:
    """Put `alias` back to `before` (None: remove it) if it still points at `version`, under
    the promotion lock: how a failed registration undoes a move it made (`moved`)."""
    with promotion_lock(client, model_name, policy) as hold:
        if alias_target(client, policy, model_name, alias) != version:
            return  # never moved, already put back, or moved on by another writer since
        hold.check(f"put {model_name}@{alias} back")
        if before is None:
            call(policy, f"remove {model_name}@{alias}", client.delete_registered_model_alias,
                 model_name, alias)
        else:
            call(policy, f"restore {model_name}@{alias}", client.set_registered_model_alias,
                 model_name, alias, before)
