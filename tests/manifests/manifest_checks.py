"""Policy checks over rendered Kubernetes objects, as plain functions.

Each ``*_violations`` function takes one object (a dict from ``yaml.safe_load``) and returns a
list of human-readable problems, empty when the object complies. The tests run them over every
object of every overlay and, in test_manifests_checks.py, over deliberately bad objects.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

# Pod templates by kind: the path from the object to a PodTemplateSpec.
_POD_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
CREDENTIAL_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY", re.IGNORECASE)
# scheme://user:password@host where the password is not only $(VAR) references.
_URI_CREDENTIALS = re.compile(r"://[^/@\s:]+:(?P<password>[^@\s]+)@")
_VAR_REFS_ONLY = re.compile(r"^(\$\([A-Za-z_][A-Za-z0-9_]*\))+$")
_SAFE_SECCOMP = {"RuntimeDefault", "Localhost"}
# PodSecurity `restricted` allows adding this capability and no other.
_ALLOWED_ADDED_CAPABILITIES = {"NET_BIND_SERVICE"}
_DANGEROUS_VERBS = {"escalate", "bind", "impersonate"}
_DANGEROUS_SUBRESOURCES = {"pods/exec", "pods/attach", "pods/portforward", "nodes/proxy"}


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def name_of(obj: Obj) -> str:
    """``Kind/namespace/name`` for messages."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace", "-")
    return f"{obj.get('kind')}/{ns}/{meta.get('name') or meta.get('generateName')}"


def _ray_cluster_pod_specs(spec: Obj, where: str) -> Iterator[tuple[str, Obj]]:
    head = _get(spec, "headGroupSpec", "template", "spec")
    if head is not None:
        yield f"{where} head", head
    for group in spec.get("workerGroupSpecs") or []:
        worker = _get(group, "template", "spec")
        if worker is not None:
            yield f"{where} worker group {group.get('groupName')}", worker


def iter_pod_specs(obj: Obj) -> Iterator[tuple[str, Obj]]:
    """Every PodSpec an object will create, with where it sits, including KubeRay's."""
    kind = obj.get("kind", "")
    where = name_of(obj)
    if kind == "Pod":
        yield where, obj.get("spec") or {}
    elif kind in _POD_TEMPLATE_PATHS:
        pod = _get(obj, *_POD_TEMPLATE_PATHS[kind], "spec")
        if pod is not None:
            yield where, pod
    elif kind == "RayCluster":
        yield from _ray_cluster_pod_specs(obj.get("spec") or {}, where)
    elif kind == "RayJob":
        spec = obj.get("spec") or {}
        if spec.get("rayClusterSpec"):
            yield from _ray_cluster_pod_specs(spec["rayClusterSpec"], where)
        submitter = _get(spec, "submitterPodTemplate", "spec")
        if submitter is not None:
            yield f"{where} submitter", submitter


def _autoscaler_container(ray_cluster_spec: Obj) -> Obj | None:
    """KubeRay adds this container to the head pod; autoscalerOptions is all we control."""
    if not ray_cluster_spec.get("enableInTreeAutoscaling"):
        return None
    options = ray_cluster_spec.get("autoscalerOptions") or {}
    container = {
        "name": "autoscaler (from autoscalerOptions)",
        "securityContext": options.get("securityContext") or {},
        "resources": options.get("resources") or {},
        "env": options.get("env") or [],
    }
    if options.get("image"):
        container["image"] = options["image"]
    return container


def iter_containers(obj: Obj) -> Iterator[tuple[str, Obj, Obj]]:
    """(where, pod spec, container) for every container, init container and Ray autoscaler."""
    for where, pod in iter_pod_specs(obj):
        for list_name in _CONTAINER_LISTS:
            for container in pod.get(list_name) or []:
                yield f"{where} {list_name[:-1]} {container.get('name')}", pod, container
    kind = obj.get("kind")
    ray_spec = obj.get("spec") if kind == "RayCluster" else _get(obj, "spec", "rayClusterSpec")
    if isinstance(ray_spec, dict):
        autoscaler = _autoscaler_container(ray_spec)
        head = _get(ray_spec, "headGroupSpec", "template", "spec") or {}
        if autoscaler is not None:
            yield f"{name_of(obj)} head {autoscaler['name']}", head, autoscaler


def security_violations(obj: Obj) -> list[str]:
    """PodSecurity `restricted` plus a read-only root filesystem, container by container."""
    problems: list[str] = []
    for where, pod in iter_pod_specs(obj):
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(flag):
                problems.append(f"{where}: {flag} is set")
        for volume in pod.get("volumes") or []:
            if "hostPath" in volume:
                problems.append(f"{where}: volume {volume.get('name')} is a hostPath")
    for where, pod, container in iter_containers(obj):
        pod_sc = pod.get("securityContext") or {}
        sc = container.get("securityContext") or {}
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{where}: runAsUser is 0")
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{where}: capabilities do not drop ALL")
        added = set(capabilities.get("add") or []) - _ALLOWED_ADDED_CAPABILITIES
        if added:
            problems.append(f"{where}: adds capabilities {sorted(added)}")
        seccomp = _get(sc, "seccompProfile", "type") or _get(pod_sc, "seccompProfile", "type")
        if seccomp not in _SAFE_SECCOMP:
            problems.append(f"{where}: seccompProfile is {seccomp!r}, not RuntimeDefault")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
    problems.extend(_rayjob_submitter_violations(obj))
    return problems


def _rayjob_submitter_violations(obj: Obj) -> list[str]:
    # K8sJobMode (the default) makes KubeRay start a submitter pod; without a template of ours
    # it has no securityContext and PodSecurity `restricted` rejects it.
    if obj.get("kind") != "RayJob":
        return []
    spec = obj.get("spec") or {}
    mode = spec.get("submissionMode", "K8sJobMode")
    if mode == "K8sJobMode" and not spec.get("submitterPodTemplate"):
        return [
            f"{name_of(obj)}: K8sJobMode without submitterPodTemplate starts a submitter pod "
            "with no securityContext (use submissionMode HTTPMode or give a template)"
        ]
    return []


def resource_violations(obj: Obj) -> list[str]:
    """Every container states cpu and memory requests and limits."""
    problems: list[str] = []
    for where, _pod, container in iter_containers(obj):
        resources = container.get("resources") or {}
        for section in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if (resources.get(section) or {}).get(resource) in (None, ""):
                    problems.append(f"{where}: no {resource} {section[:-1]}")
    return problems


def image_is_pinned(image: str) -> bool:
    """True for ``repo:tag`` (tag not latest) and ``repo@sha256:...``."""
    if "@" in image:
        return image.split("@", 1)[1].startswith("sha256:")
    last = image.rsplit("/", 1)[-1]  # a registry's :port sits before the last slash
    if ":" not in last:
        return False
    tag = last.split(":", 1)[1]
    return bool(tag) and tag != "latest"


def image_violations(obj: Obj) -> list[str]:
    problems: list[str] = []
    for where, _pod, container in iter_containers(obj):
        image = container.get("image")
        if image is None and "autoscaler" in where:
            continue  # KubeRay then uses the head's image, checked on its own
        if not image or not image_is_pinned(image):
            problems.append(f"{where}: image {image!r} is not pinned by a tag or digest")
    return problems


def images(obj: Obj) -> list[str]:
    return [c["image"] for _w, _p, c in iter_containers(obj) if c.get("image")]


def secret_value_violations(obj: Obj) -> list[str]:
    """A Secret in the repository may name its keys but never carry a value."""
    if obj.get("kind") != "Secret":
        return []
    return [
        f"{name_of(obj)}: {field}.{key} has a value"
        for field in ("data", "stringData")
        for key, value in (obj.get(field) or {}).items()
        if value not in (None, "")
    ]


def _inline_uri_password(value: str) -> bool:
    match = _URI_CREDENTIALS.search(value)
    return bool(match) and not _VAR_REFS_ONLY.match(match.group("password"))


def credential_violations(obj: Obj) -> list[str]:
    """Credentials come from Secrets: never a literal env value, a ConfigMap or a URI."""
    problems: list[str] = []
    for where, _pod, container in iter_containers(obj):
        for env in container.get("env") or []:
            name = env.get("name", "")
            value = env.get("value")
            if CREDENTIAL_NAME.search(name) and _get(env, "valueFrom", "secretKeyRef") is None:
                problems.append(f"{where}: env {name} does not come from a secretKeyRef")
            if isinstance(value, str) and _inline_uri_password(value):
                problems.append(f"{where}: env {name} has a password inside a URI")
    if obj.get("kind") == "ConfigMap":
        for key, value in (obj.get("data") or {}).items():
            if CREDENTIAL_NAME.search(key):
                problems.append(f"{name_of(obj)}: key {key} looks like a credential")
            if isinstance(value, str) and _inline_uri_password(value):
                problems.append(f"{name_of(obj)}: key {key} has a password inside a URI")
    return problems


def rbac_violations(obj: Obj) -> list[str]:
    """No wildcards, no Secrets, no privilege-escalating verbs or pod exec."""
    if obj.get("kind") not in ("Role", "ClusterRole"):
        return []
    problems: list[str] = []
    for i, rule in enumerate(obj.get("rules") or []):
        where = f"{name_of(obj)} rule {i}"
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            if any("*" in item for item in rule.get(field) or []):
                problems.append(f"{where}: wildcard in {field}")
        resources = set(rule.get("resources") or [])
        if "secrets" in resources:
            problems.append(f"{where}: grants access to secrets")
        if resources & _DANGEROUS_SUBRESOURCES:
            problems.append(f"{where}: grants {sorted(resources & _DANGEROUS_SUBRESOURCES)}")
        if set(rule.get("verbs") or []) & _DANGEROUS_VERBS:
            problems.append(f"{where}: grants {sorted(set(rule['verbs']) & _DANGEROUS_VERBS)}")
    return problems


def all_violations(obj: Obj) -> list[str]:
    return [
        *security_violations(obj),
        *resource_violations(obj),
        *image_violations(obj),
        *secret_value_violations(obj),
        *credential_violations(obj),
        *rbac_violations(obj),
    ]


def gpu_count(container: Obj) -> int:
    resources = container.get("resources") or {}
    limits = (resources.get("limits") or {}).get("nvidia.com/gpu", 0)
    requests = (resources.get("requests") or {}).get("nvidia.com/gpu", 0)
    return max(int(limits), int(requests))


# --- CRD schemas -------------------------------------------------------------------------------


def load_crd_schema(path: Path, version: str = "v1") -> Obj:
    """``spec.versions[name==version].schema.openAPIV3Schema`` of a CRD file."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the files are ~1 MB
    with path.open() as f:
        crd = yaml.load(f, Loader=loader)
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return entry["schema"]["openAPIV3Schema"]
    raise KeyError(f"{path.name} has no version {version}")


def close_schema(schema: Obj) -> Obj:
    """A copy that rejects unknown fields, as the API server's strict field validation does.

    A structural schema leaves additionalProperties unset, which jsonschema reads as "anything
    goes": a misspelt field (``workerGroupSpec``) would pass. Objects that declare
    ``x-kubernetes-preserve-unknown-fields`` stay open. The ``x-kubernetes-*`` keywords and
    formats such as ``int32`` are otherwise ignored by jsonschema; int-or-string fields are
    ``anyOf: [integer, string]`` and pass either way. CEL rules (x-kubernetes-validations) are
    not evaluated.
    """
    closed = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(closed)
    return closed
