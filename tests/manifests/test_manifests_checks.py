"""The policy checks themselves fail on bad objects: without these, a check that never fires
would let every overlay pass."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest
from manifest_checks import (
    close_schema,
    credential_violations,
    image_is_pinned,
    image_violations,
    rbac_violations,
    resource_violations,
    secret_value_violations,
    security_violations,
)

GOOD_CONTAINER: dict[str, Any] = {
    "name": "app",
    "image": "example.org/app:1.2.3",
    "resources": {
        "requests": {"cpu": "100m", "memory": "64Mi"},
        "limits": {"cpu": "1", "memory": "128Mi"},
    },
    "securityContext": {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    },
}


def deployment(*containers: dict[str, Any], init: tuple[dict[str, Any], ...] = ()) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app", "namespace": "kdflow"},
        "spec": {
            "template": {"spec": {"containers": list(containers), "initContainers": list(init)}}
        },
    }


def changed(**fields: Any) -> dict[str, Any]:
    container = copy.deepcopy(GOOD_CONTAINER)
    container.update(fields)
    return container


def test_good_container_passes_every_check() -> None:
    obj = deployment(GOOD_CONTAINER)
    for check in (security_violations, resource_violations, image_violations):
        assert check(obj) == []


def test_security_check_flags_a_root_container_with_escalation() -> None:
    bad = changed(securityContext={"runAsUser": 0, "privileged": True})
    problems = security_violations(deployment(bad))
    for expected in (
        "runAsNonRoot is not true",
        "runAsUser is 0",
        "privileged",
        "allowPrivilegeEscalation is not false",
        "capabilities do not drop ALL",
        "seccompProfile is None",
        "readOnlyRootFilesystem is not true",
    ):
        assert any(expected in p for p in problems), (expected, problems)


def test_security_check_accepts_pod_level_run_as_non_root_and_seccomp() -> None:
    sc = dict(GOOD_CONTAINER["securityContext"])
    del sc["runAsNonRoot"], sc["seccompProfile"]
    obj = deployment(changed(securityContext=sc))
    obj["spec"]["template"]["spec"]["securityContext"] = {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert security_violations(obj) == []


def test_resource_check_reaches_init_containers() -> None:
    init = changed(name="setup", resources={"requests": {"cpu": "1"}})
    problems = resource_violations(deployment(GOOD_CONTAINER, init=(init,)))
    assert problems == [
        "Deployment/kdflow/app initContainer setup: no memory request",
        "Deployment/kdflow/app initContainer setup: no cpu limit",
        "Deployment/kdflow/app initContainer setup: no memory limit",
    ]


def test_ray_autoscaler_without_options_is_flagged() -> None:
    pod = {"containers": [GOOD_CONTAINER]}
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "ray"},
        "spec": {"enableInTreeAutoscaling": True, "headGroupSpec": {"template": {"spec": pod}}},
    }
    assert any("autoscaler" in p for p in resource_violations(cluster))
    assert any("autoscaler" in p for p in security_violations(cluster))


def test_rayjob_in_k8s_job_mode_without_submitter_template_is_flagged() -> None:
    job = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "j"}, "spec": {}}
    assert any("submitter" in p for p in security_violations(job))
    job["spec"]["submissionMode"] = "HTTPMode"
    assert security_violations(job) == []


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("postgres:17.6-bookworm", True),
        ("ghcr.io/mlflow/mlflow:v3.17.2-full", True),
        ("localhost:5000/kdflow:0.1.0", True),
        ("repo@sha256:" + "a" * 64, True),
        ("postgres", False),
        ("postgres:latest", False),
        ("localhost:5000/kdflow", False),
    ],
)
def test_image_is_pinned_by_tag_or_digest(image: str, pinned: bool) -> None:
    assert image_is_pinned(image) is pinned


def test_secret_with_a_value_is_flagged() -> None:
    secret = {
        "kind": "Secret",
        "metadata": {"name": "s"},
        "stringData": {"USER": "", "PASSWORD": "hunter2"},
        "data": {"TOKEN": "aHVudGVyMg=="},
    }
    assert secret_value_violations(secret) == [
        "Secret/-/s: data.TOKEN has a value",
        "Secret/-/s: stringData.PASSWORD has a value",
    ]


def test_literal_credentials_in_env_and_uris_are_flagged() -> None:
    env = [
        {"name": "DB_PASSWORD", "value": "hunter2"},
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"configMapKeyRef": {"name": "c"}}},
        {"name": "DSN", "value": "postgresql://mlflow:hunter2@postgres/mlflow"},
        {"name": "SAFE_DSN", "value": "postgresql://$(U):$(P)@postgres/mlflow"},
        {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "t"}}},
    ]
    problems = credential_violations(deployment(changed(env=env)))
    assert [p.split(": ", 1)[1] for p in problems] == [
        "env DB_PASSWORD does not come from a secretKeyRef",
        "env AWS_SECRET_ACCESS_KEY does not come from a secretKeyRef",
        "env DSN has a password inside a URI",
    ]


def test_rbac_wildcards_secrets_and_exec_are_flagged() -> None:
    role = {
        "kind": "ClusterRole",
        "metadata": {"name": "too-much"},
        "rules": [
            {"apiGroups": ["*"], "resources": ["rayjobs"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["secrets", "pods/exec"], "verbs": ["get"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["*"]},
        ],
    }
    problems = rbac_violations(role)
    assert any("wildcard in apiGroups" in p for p in problems)
    assert any("secrets" in p for p in problems)
    assert any("pods/exec" in p for p in problems)
    assert any("wildcard in verbs" in p for p in problems)


def test_closed_schema_rejects_unknown_fields_but_keeps_open_maps() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "replicas": {"type": "integer"},
                    "memory": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "raw": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            }
        },
    }
    validator = jsonschema.Draft7Validator(close_schema(schema))
    ok = {"spec": {"replicas": 1, "memory": "4Gi", "labels": {"a": "b"}, "raw": {"any": 1}}}
    assert list(validator.iter_errors(ok)) == []
    assert not validator.is_valid({"spec": {"replica": 1}})
    assert not validator.is_valid({"spec": {"replicas": "one"}})
    # the input schema is left as it was
    assert "additionalProperties" not in schema["properties"]["spec"]
