"""Reading the registry: versions and the aliases on them, listing and comparing versions.

MLflow 3 uses aliases, not stages: every registered version gets `challenger`, and
`champion` marks the one that serves (`kdflow.mlflow.promotion` moves it).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from kdflow.errors import RegistryError
from kdflow.mlflow.client import (
    DATASET_TAG,
    METRICS_TAG,
    MISSING,
    ROLLED_BACK_TAG,
    RUN_TAG,
    STUDENT_TAG,
    RetryPolicy,
    call,
    error_code,
    http_settings,
    mlflow_client,
    registry_errors,
    short_error,
)

CHAMPION = "champion"
CHALLENGER = "challenger"


def version_by_alias(client: Any, model_name: str, alias: str) -> Any | None:
    """The ModelVersion `alias` points at, or None when the alias is not set (one try)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if error_code(exc) in MISSING or "not found" in str(exc).lower():
            return None
        raise


def alias_target(client: Any, policy: RetryPolicy, model_name: str, alias: str) -> str | None:
    """The version number `alias` points at, or None, read with retries."""
    found = call(policy, f"read {model_name}@{alias}", version_by_alias, client, model_name,
                 alias)
    return None if found is None else str(found.version)


def version_exists(client: Any, policy: RetryPolicy, model_name: str, version: str) -> bool:
    """Whether `model_name` has `version` (deleted versions do not count)."""
    from mlflow.exceptions import MlflowException

    try:
        call(policy, f"read {model_name} version {version}", client.get_model_version,
             model_name, version)
        return True
    except MlflowException as exc:
        if error_code(exc) in MISSING:
            return False
        raise


def require_version(client: Any, policy: RetryPolicy, model_name: str, version: str) -> None:
    """A RegistryError saying how to list the versions unless `version` exists."""
    if not version.isdigit() or not version_exists(client, policy, model_name, version):
        raise RegistryError(
            f"{model_name} has no version {version}; `kdflow models list {model_name}` lists them"
        )


def champion_version(
    tracking_uri: str, model_name: str, policy: RetryPolicy | None = None
) -> Any | None:
    """The ModelVersion holding the `champion` alias, or None when there is none."""
    from mlflow.exceptions import MlflowException

    policy = policy or RetryPolicy()
    try:
        with http_settings.applied(policy):
            return call(
                policy,
                f"read {model_name}@{CHAMPION}",
                version_by_alias,
                mlflow_client(tracking_uri),
                model_name,
                CHAMPION,
            )
    except MlflowException as exc:
        raise RegistryError(
            f"cannot read {model_name}@{CHAMPION} from {tracking_uri}: {short_error(exc)}"
        ) from exc


def resolve_model_uri(
    tracking_uri: str, model_uri: str, policy: RetryPolicy | None = None
) -> dict[str, Any]:
    """`models:/name@alias` or `models:/name/version` -> its name, version and a URI pinned
    to that version (lineage for teachers imported from the registry)."""
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", model_uri)
    if not match:
        return {"uri": model_uri}
    name, alias, number = match.groups()
    if alias:
        policy = policy or RetryPolicy()
        with http_settings.applied(policy), registry_errors(tracking_uri, name):
            found = call(policy, f"resolve {model_uri}", version_by_alias,
                         mlflow_client(tracking_uri), name, alias)
        if found is None:
            return {"uri": model_uri, "name": name}
        number = str(found.version)
    return {"uri": model_uri, "name": name, "version": int(number),
            "pinned_uri": f"models:/{name}/{number}"}


def list_versions(
    tracking_uri: str, model_name: str, policy: RetryPolicy | None = None
) -> list[dict[str, Any]]:
    """Every version of `model_name`, newest first, with aliases and headline metrics."""
    policy = policy or RetryPolicy()
    client = mlflow_client(tracking_uri)
    with http_settings.applied(policy), registry_errors(tracking_uri, model_name):
        model = call(policy, f"read {model_name}", client.get_registered_model, model_name)
        versions = call(policy, f"list versions of {model_name}", client.search_model_versions,
                        f"name='{model_name}'")
    aliases: dict[str, list[str]] = {}
    for alias, number in (model.aliases or {}).items():
        aliases.setdefault(str(number), []).append(alias)
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = v.tags or {}
        try:
            headline = json.loads(tags.get(METRICS_TAG, "{}"))
        except ValueError:
            headline = {}
        rows.append(
            {
                "version": int(v.version),
                "aliases": sorted(aliases.get(str(v.version), [])),
                "created": datetime.fromtimestamp(v.creation_timestamp / 1000, UTC),
                "status": str(v.status),
                "run_id": v.run_id,
                "pipeline_run": tags.get(RUN_TAG),
                "dataset_sha256": tags.get(DATASET_TAG),
                "student": tags.get(STUDENT_TAG),
                "rolled_back": tags.get(ROLLED_BACK_TAG),
                "metrics": headline,
            }
        )
    return rows


def compare_versions(
    tracking_uri: str,
    model_name: str,
    first: int | str,
    second: int | str,
    policy: RetryPolicy | None = None,
) -> dict[str, Any]:
    """Metrics of two versions' runs side by side, and the lineage tags that differ."""
    policy = policy or RetryPolicy()
    client = mlflow_client(tracking_uri)
    out: dict[str, Any] = {"name": model_name, "versions": [int(first), int(second)]}
    with http_settings.applied(policy), registry_errors(tracking_uri, model_name):
        found = []
        for number in (str(first), str(second)):
            require_version(client, policy, model_name, number)
            version = call(policy, f"read version {number}", client.get_model_version,
                           model_name, number)
            run = call(policy, f"read the run of version {number}", client.get_run,
                       version.run_id)
            found.append((version, run))
    metrics = sorted(set(found[0][1].data.metrics) | set(found[1][1].data.metrics))
    out["metrics"] = {
        key: [run.data.metrics.get(key) for _, run in found] for key in metrics
    }
    tag_keys = sorted(
        k for k in set(found[0][0].tags or {}) | set(found[1][0].tags or {})
        if k.startswith("kdflow.") and k != METRICS_TAG
    )
    out["tags"] = {
        key: [(v.tags or {}).get(key) for v, _ in found]
        for key in tag_keys
        if (found[0][0].tags or {}).get(key) != (found[1][0].tags or {}).get(key)
    }
    out["same_test_data"] = (found[0][0].tags or {}).get(DATASET_TAG) == (
        found[1][0].tags or {}
    ).get(DATASET_TAG)
    return out

