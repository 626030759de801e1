"""Egress in kdflow is denied by default and opened per workload: every pod resolves names,
MLflow reaches PostgreSQL and S3, the Ray cluster reaches itself, MLflow and S3 (its head the
API server), the backup PostgreSQL and S3, and PostgreSQL nothing but DNS.

The rendered NetworkPolicies (real `kubectl kustomize`, conftest.py) are evaluated the way the
API defines them: policies are additive, a pod selected by no policy of a direction is not
isolated, a connection between two kdflow pods needs the sender's egress and the receiver's
ingress. Pods come from the workloads' pod templates (KubeRay's labels added to the Ray pods).
"""

from __future__ import annotations

import ipaddress
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from manifest_checks import name_of
from manifest_files import MANIFESTS, Rendered, kustomize

EGRESS_ENV = MANIFESTS / "base" / "network-policies" / "egress.env"
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
KUBE_DNS = {"k8s-app": "kube-dns"}
_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


@dataclass(frozen=True)
class Endpoint:
    """One end of a connection: a pod (labels, namespace) or an address outside the cluster."""

    name: str
    labels: dict[str, str] | None = None
    namespace: str | None = None
    ip: str | None = None
    namespace_labels: dict[str, str] = field(default_factory=dict)


def read_egress_env(path: Path = EGRESS_ENV) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        obj = (obj or {}).get(key)
    return obj


def pods(rendered: Rendered) -> dict[str, Endpoint]:
    """Every pod the overlay will run, by a short name, with the labels it will carry."""
    found: dict[str, Endpoint] = {}
    for obj in rendered.objects:
        namespace = obj["metadata"].get("namespace")
        kind = obj["kind"]
        if kind in _TEMPLATE_PATHS:
            labels = _get(obj, *_TEMPLATE_PATHS[kind], "metadata", "labels") or {}
            found[obj["metadata"]["name"]] = pod(name_of(obj), labels, namespace)
        elif kind == "RayCluster":
            # KubeRay keeps the template's labels and adds these to every Ray pod.
            cluster = obj["metadata"]["name"]
            head = _get(obj, "spec", "headGroupSpec", "template", "metadata", "labels") or {}
            found["ray-head"] = pod(
                f"{name_of(obj)} head",
                {**head, "ray.io/cluster": cluster, "ray.io/node-type": "head"},
                namespace,
            )
            for group in obj["spec"].get("workerGroupSpecs", []):
                labels = _get(group, "template", "metadata", "labels") or {}
                found[f"ray-{group['groupName']}"] = pod(
                    f"{name_of(obj)} worker group {group['groupName']}",
                    {
                        **labels,
                        "ray.io/cluster": cluster,
                        "ray.io/node-type": "worker",
                        "ray.io/group": group["groupName"],
                    },
                    namespace,
                )
    return found


def pod(name: str, labels: dict[str, str], namespace: str | None) -> Endpoint:
    return Endpoint(name, labels, namespace, namespace_labels={NAMESPACE_LABEL: namespace or ""})


def kube_dns() -> Endpoint:
    return Endpoint(
        "kube-dns", KUBE_DNS, "kube-system", namespace_labels={NAMESPACE_LABEL: "kube-system"}
    )


def outside(ip: str) -> Endpoint:
    return Endpoint(f"address {ip}", ip=ip)


def an_address_in(cidr: str) -> str:
    network = ipaddress.ip_network(cidr)
    return str(network[1] if network.num_addresses > 1 else network[0])


# --- NetworkPolicy semantics -------------------------------------------------------------------


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A label selector as the API reads it: {} selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def peer_matches(peer: dict[str, Any], other: Endpoint, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        # Only addresses outside the cluster: CNIs need not match pod IPs with ipBlocks.
        if other.ip is None:
            return False
        address = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except") or []
        )
    if other.labels is None:
        return False
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], other.namespace_labels)
    else:
        in_namespace = other.namespace == policy_namespace
    return in_namespace and selects(peer.get("podSelector"), other.labels)


def port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        if "port" not in entry:
            return True
        if entry["port"] == port or entry["port"] <= port <= entry.get("endPort", -1):
            return True
    return False


def _policies(rendered: Rendered, subject: Endpoint, direction: str) -> list[dict[str, Any]]:
    return [
        p
        for p in rendered.of_kind("NetworkPolicy")
        if p["metadata"].get("namespace") == subject.namespace
        and direction in p["spec"].get("policyTypes", [])
        and selects(p["spec"]["podSelector"], subject.labels or {})
    ]


def allows(
    rendered: Rendered, subject: Endpoint, other: Endpoint, port: int, protocol: str, direction: str
) -> bool:
    """Whether the policies on `subject` let it talk to `other` (Egress) or hear it (Ingress)."""
    policies = _policies(rendered, subject, direction)
    if not policies:
        return True  # not isolated in this direction
    rules_key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    return any(
        port_matches(rule.get("ports"), port, protocol)
        and (
            not rule.get(peers_key)
            or any(peer_matches(p, other, policy["metadata"]["namespace"]) for p in rule[peers_key])
        )
        for policy in policies
        for rule in policy["spec"].get(rules_key) or []
    )


def egress(rendered: Rendered, src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP"):
    return allows(rendered, src, dst, port, protocol, "Egress")


def connects(rendered: Rendered, src: Endpoint, dst: Endpoint, port: int) -> bool:
    """A TCP connection between two kdflow pods: the sender's egress and the receiver's ingress."""
    return egress(rendered, src, dst, port) and allows(rendered, dst, src, port, "TCP", "Ingress")


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def kdflow_pods(overlay: Rendered) -> dict[str, Endpoint]:
    found = pods(overlay)
    for expected in ("mlflow", "postgres", "postgres-backup", "ray-head", "mlflow-create-user"):
        assert expected in found, f"{overlay.name} renders no {expected} pod"
    assert [n for n in found if n.startswith("ray-") and n != "ray-head"], "no Ray worker group"
    return found


def ray_workers(found: dict[str, Endpoint]) -> list[Endpoint]:
    return [p for n, p in found.items() if n.startswith("ray-") and n != "ray-head"]


S3_PARAMS = read_egress_env()
S3 = outside(an_address_in(S3_PARAMS["s3EgressCIDR"]))
S3_PORT = int(S3_PARAMS["s3EgressPort"])
API_SERVER = outside(an_address_in(S3_PARAMS["apiServerEgressCIDR"]))


# --- the tests ---------------------------------------------------------------------------------


def test_egress_is_denied_by_default_for_every_pod(overlay: Rendered, kdflow_pods) -> None:
    deny_all = [
        p
        for p in overlay.of_kind("NetworkPolicy")
        if p["spec"]["podSelector"] == {}
        and p["spec"]["policyTypes"] == ["Egress"]
        and not p["spec"].get("egress")
    ]
    assert [p["metadata"]["name"] for p in deny_all] == ["default-deny-egress"]
    for endpoint in kdflow_pods.values():
        assert _policies(overlay, endpoint, "Egress"), f"{endpoint.name} is not egress-isolated"
        # Nothing the policies did not name: an address on the internet on an odd port.
        assert not egress(overlay, endpoint, outside("203.0.113.7"), 25), endpoint.name


def test_every_pod_resolves_names_with_the_cluster_dns(overlay: Rendered, kdflow_pods) -> None:
    for endpoint in kdflow_pods.values():
        for protocol in ("UDP", "TCP"):
            assert egress(overlay, endpoint, kube_dns(), 53, protocol), (endpoint.name, protocol)
        # The DNS rule names kube-dns, not every pod of kube-system.
        other = Endpoint(
            "metrics",
            {"k8s-app": "metrics-server"},
            "kube-system",
            namespace_labels={NAMESPACE_LABEL: "kube-system"},
        )
        assert not egress(overlay, endpoint, other, 53, "UDP"), endpoint.name


def test_mlflow_reaches_postgres_and_s3_only(overlay: Rendered, kdflow_pods) -> None:
    mlflow, postgres = kdflow_pods["mlflow"], kdflow_pods["postgres"]
    assert connects(overlay, mlflow, postgres, 5432)
    assert egress(overlay, mlflow, S3, S3_PORT)
    assert not egress(overlay, mlflow, S3, 22)
    assert not egress(overlay, mlflow, kdflow_pods["ray-head"], 8265)
    assert not egress(overlay, mlflow, API_SERVER, 6443)


def test_ray_reaches_itself_mlflow_and_s3(overlay: Rendered, kdflow_pods) -> None:
    head, mlflow = kdflow_pods["ray-head"], kdflow_pods["mlflow"]
    for worker in ray_workers(kdflow_pods):
        for port in (6379, 8265, 10001, 20001):  # GCS, dashboard, client, a worker port
            assert connects(overlay, worker, head, port), (worker.name, port)
        assert connects(overlay, head, worker, 20001), worker.name
        assert connects(overlay, worker, worker, 20001), worker.name  # object transfer
        for node in (head, worker):
            assert connects(overlay, node, mlflow, 5000), node.name
            assert egress(overlay, node, S3, S3_PORT), node.name
            assert not connects(overlay, node, kdflow_pods["postgres"], 5432), node.name


def test_only_the_ray_head_reaches_the_api_server(overlay: Rendered, kdflow_pods) -> None:
    # The autoscaler sidecar in the head scales the workers through the Kubernetes API.
    for port in (443, 6443):
        assert egress(overlay, kdflow_pods["ray-head"], API_SERVER, port), port
    for name in (
        "mlflow",
        "postgres",
        "postgres-backup",
        *[w for w in kdflow_pods if "worker" in w],
    ):
        assert not egress(overlay, kdflow_pods[name], API_SERVER, 6443), name


def test_backup_reaches_postgres_and_s3_only(overlay: Rendered, kdflow_pods) -> None:
    backup = kdflow_pods["postgres-backup"]
    assert connects(overlay, backup, kdflow_pods["postgres"], 5432)
    assert egress(overlay, backup, S3, S3_PORT)
    assert not connects(overlay, backup, kdflow_pods["mlflow"], 5000)
    assert not connects(overlay, backup, kdflow_pods["ray-head"], 8265)


def test_the_create_user_job_reaches_mlflow_only(overlay: Rendered, kdflow_pods) -> None:
    job = kdflow_pods["mlflow-create-user"]
    assert connects(overlay, job, kdflow_pods["mlflow"], 5000)
    assert not egress(overlay, job, S3, S3_PORT)
    assert not connects(overlay, job, kdflow_pods["postgres"], 5432)


def test_postgres_has_no_egress_but_dns(overlay: Rendered, kdflow_pods) -> None:
    postgres = kdflow_pods["postgres"]
    rules = [
        rule
        for policy in _policies(overlay, postgres, "Egress")
        for rule in policy["spec"].get("egress") or []
    ]
    assert rules, "PostgreSQL cannot even resolve names"
    for rule in rules:
        assert rule["to"] == [
            {
                "namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: "kube-system"}},
                "podSelector": {"matchLabels": KUBE_DNS},
            }
        ]
        assert {p["port"] for p in rule["ports"]} == {53}
    for name, other in kdflow_pods.items():
        if name != "postgres":
            assert not egress(overlay, postgres, other, 5000), name
    assert not egress(overlay, postgres, S3, S3_PORT)


def test_no_egress_rule_opens_every_destination_or_every_port(overlay: Rendered) -> None:
    problems = []
    for policy in overlay.of_kind("NetworkPolicy"):
        for i, rule in enumerate(policy["spec"].get("egress") or []):
            where = f"{name_of(policy)} egress rule {i}"
            peers = rule.get("to") or []
            if not peers:
                problems.append(f"{where}: allows every destination")
            if rule.get("ports"):
                continue
            # All ports only towards named pods of kdflow itself (the Ray cluster's own nodes).
            for peer in peers:
                if set(peer) != {"podSelector"} or not peer["podSelector"]:
                    problems.append(f"{where}: all ports to {peer}")
    assert problems == []


def test_egress_params_are_valid_addresses() -> None:
    for key in ("s3EgressCIDR", "apiServerEgressCIDR"):
        ipaddress.ip_network(S3_PARAMS[key])  # strict: a host address with a prefix fails
    assert 0 < S3_PORT < 65536


def test_egress_env_sets_the_s3_and_api_server_addresses(kubectl: Path, tmp_path: Path) -> None:
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    (copy / "base" / "network-policies" / "egress.env").write_text(
        "s3EgressCIDR=10.20.0.0/16\ns3EgressPort=9000\napiServerEgressCIDR=10.0.0.5/32\n"
    )
    rendered = Rendered("copy", kustomize(kubectl, copy / "overlays" / "dev"))
    found = pods(rendered)
    minio, aws = outside("10.20.3.4"), outside("52.216.0.1")
    for name in ("mlflow", "postgres-backup", "ray-head"):
        assert egress(rendered, found[name], minio, 9000), name
        assert not egress(rendered, found[name], minio, 443), name
        assert not egress(rendered, found[name], aws, 9000), name
    head = found["ray-head"]
    assert egress(rendered, head, outside("10.0.0.5"), 6443)
    assert not egress(rendered, head, outside("10.0.0.6"), 6443)
    # local-config: it feeds the replacements and never reaches the cluster.
    assert "kdflow-egress-params" not in {
        c["metadata"]["name"] for c in rendered.of_kind("ConfigMap")
    }
