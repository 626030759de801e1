"""Reading the registry on a local sqlite store: listing versions, resolving model URIs."""

from __future__ import annotations

import pytest

from kdflow.errors import RegistryError
from kdflow.mlflow.client import RetryPolicy
from kdflow.mlflow.versions import list_versions, resolve_model_uri


def test_listing_an_unknown_model_names_it_and_the_store(registry_store):
    store = registry_store
    with pytest.raises(RegistryError, match=f"^nosuch is not a registered model in {store}"):
        list_versions(store, "nosuch", RetryPolicy(attempts=1))


def test_list_shows_versions_newest_first_with_their_aliases(registered):
    client, name = registered.client, registered.name
    v1, v2 = registered.add_version(0.9), registered.add_version(0.91)
    client.set_registered_model_alias(name, "champion", v1)
    client.set_registered_model_alias(name, "challenger", v2)
    rows = list_versions(registered.store, name, registered.policy)
    assert [(r["version"], r["aliases"]) for r in rows] == [
        (int(v2), ["challenger"]), (int(v1), ["champion"])
    ]


def test_a_teacher_uri_resolves_to_the_version_its_alias_points_at(registered):
    store, name, policy = registered.store, registered.name, registered.policy
    registered.add_version(0.9)
    v2 = registered.add_version(0.95)
    registered.client.set_registered_model_alias(name, "champion", v2)
    assert resolve_model_uri(store, f"models:/{name}@champion", policy) == {
        "uri": f"models:/{name}@champion", "name": name, "version": int(v2),
        "pinned_uri": f"models:/{name}/{v2}",
    }
    assert resolve_model_uri(store, f"models:/{name}@gone", policy) == {
        "uri": f"models:/{name}@gone", "name": name,
    }
    assert resolve_model_uri(store, "mlp:hidden=64") == {"uri": "mlp:hidden=64"}
