"""The rules every rendered object of every overlay keeps: PodSecurity `restricted`, resources on
every container, pinned images, no credentials outside Secrets, least-privilege RBAC, ingress
only from the pipeline namespace, and the right hardware per overlay."""

from __future__ import annotations

import re
from typing import Any

import pytest
from manifest_checks import (
    credential_violations,
    gpu_count,
    image_violations,
    images,
    iter_containers,
    iter_pod_specs,
    name_of,
    rbac_violations,
    resource_violations,
    secret_value_violations,
    security_violations,
)
from manifest_files import OVERLAYS, Rendered, read_lock, read_params

PIPELINE_SERVICE_ACCOUNT = "kdflow-pipeline"
# (apiGroup, resource, verb) the pipeline's service account may use, and nothing else.
PIPELINE_GRANTS = {
    *{("", r, v) for r in ("services", "pods") for v in ("get", "list")},
    ("", "pods/log", "get"),
}


def violations(rendered: Rendered, check) -> list[str]:
    return [problem for obj in rendered.objects for problem in check(obj)]


def containers(rendered: Rendered) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [c for obj in rendered.objects for c in iter_containers(obj)]


# --- pods and containers -----------------------------------------------------------------------


def test_every_container_meets_pod_security_restricted(overlay: Rendered) -> None:
    assert violations(overlay, security_violations) == []


def test_every_container_has_requests_and_limits(overlay: Rendered) -> None:
    assert violations(overlay, resource_violations) == []


def test_every_image_is_pinned(overlay: Rendered) -> None:
    assert violations(overlay, image_violations) == []


def test_checks_cover_init_and_autoscaler_containers(overlay: Rendered) -> None:
    where = [w for w, _pod, _c in containers(overlay)]
    assert any("autoscaler" in w for w in where), "the Ray autoscaler is not checked"
    assert any("ray-worker" in w for w in where) and any("ray-head" in w for w in where)


def test_namespace_enforces_pod_security_restricted(overlay: Rendered) -> None:
    (namespace,) = overlay.of_kind("Namespace")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    name = namespace["metadata"]["name"]
    elsewhere = [
        name_of(o)
        for o in overlay.objects
        if o["kind"] != "Namespace" and o["metadata"].get("namespace") != name
    ]
    assert elsewhere == [], f"objects outside namespace {name}"


def test_example_rayjob_meets_policy(example_objects) -> None:
    problems = [
        p
        for obj in example_objects
        for check in (security_violations, resource_violations, image_violations)
        for p in check(obj)
    ]
    assert problems == []


# --- credentials -------------------------------------------------------------------------------


def test_credentials_come_only_from_secret_refs(overlay: Rendered) -> None:
    assert violations(overlay, credential_violations) == []


def test_overlays_ship_no_secrets(overlay: Rendered) -> None:
    # Applying an overlay must never overwrite the Secrets an operator created by hand.
    assert overlay.of_kind("Secret") == []


def test_secret_templates_carry_no_values(secret_templates: Rendered) -> None:
    assert violations(secret_templates, secret_value_violations) == []


def test_every_secret_key_used_has_a_template(overlay: Rendered, secret_templates) -> None:
    templated = {
        (s["metadata"]["name"], key)
        for s in secret_templates.of_kind("Secret")
        for key in {**s.get("data", {}), **s.get("stringData", {})}
    }
    used = {
        (ref["name"], ref["key"])
        for _where, _pod, container in containers(overlay)
        for env in container.get("env") or []
        if (ref := (env.get("valueFrom") or {}).get("secretKeyRef"))
    }
    assert used, "no container reads a Secret: the check has nothing to compare"
    assert used <= templated, f"no template for {sorted(used - templated)}"


# --- RBAC --------------------------------------------------------------------------------------


def test_roles_have_no_wildcards_and_no_secret_access(overlay: Rendered) -> None:
    assert violations(overlay, rbac_violations) == []


def test_pipeline_account_can_only_read_ray_pods_and_logs(overlay: Rendered) -> None:
    assert overlay.of_kind("ClusterRole") == [] and overlay.of_kind("ClusterRoleBinding") == []
    roles = {r["metadata"]["name"]: r for r in overlay.of_kind("Role")}
    pipeline_ns = read_params()["pipelineNamespace"]
    for binding in overlay.of_kind("RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": PIPELINE_SERVICE_ACCOUNT, "namespace": pipeline_ns}
        ]
        role = roles[binding["roleRef"]["name"]]
        grants = {
            (group, resource, verb)
            for rule in role["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
        assert grants <= PIPELINE_GRANTS, f"extra grants {sorted(grants - PIPELINE_GRANTS)}"
        # kdflow submits over the Ray Jobs API; a RayJob could mount any Secret in kdflow.
        assert not any(group == "ray.io" for group, _, _ in grants)


# --- network -----------------------------------------------------------------------------------


def test_ingress_is_denied_by_default(overlay: Rendered) -> None:
    default_deny = [
        p
        for p in overlay.of_kind("NetworkPolicy")
        if p["spec"]["podSelector"] == {}
        and "Ingress" in p["spec"]["policyTypes"]
        and not p["spec"].get("ingress")
    ]
    assert default_deny, "no default-deny ingress NetworkPolicy"


def test_network_policies_admit_only_kdflow_and_known_namespaces(overlay: Rendered) -> None:
    params = read_params()
    allowed = {params["pipelineNamespace"], params["kuberayNamespace"]}
    problems = []
    for policy in overlay.of_kind("NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            if not rule.get("from"):
                problems.append(f"{name_of(policy)}: a rule admits every source")
            for peer in rule.get("from", []):
                if "ipBlock" in peer:
                    problems.append(f"{name_of(policy)}: admits an ipBlock")
                if "namespaceSelector" in peer:
                    labels = peer["namespaceSelector"].get("matchLabels", {})
                    if labels.get("kubernetes.io/metadata.name") not in allowed:
                        problems.append(f"{name_of(policy)}: admits namespaces {labels}")
    assert problems == []


def _ingress(overlay: Rendered, name: str) -> list[dict[str, Any]]:
    return overlay.one("NetworkPolicy", name)["spec"]["ingress"]


def test_mlflow_is_reachable_on_5000_from_the_pipeline_namespace(overlay: Rendered) -> None:
    pipeline_ns = read_params()["pipelineNamespace"]
    (rule,) = _ingress(overlay, "mlflow-ingress")
    assert [p["port"] for p in rule["ports"]] == [5000]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": pipeline_ns}}} in (
        rule["from"]
    )


def test_only_the_jobs_api_of_the_ray_head_is_open_to_the_pipeline(overlay: Rendered) -> None:
    """kdflow talks to Ray over the Jobs API only; the Ray client and GCS ports would run code
    in the cluster without a job, so the pipeline's namespace (and nobody else) gets 8265."""
    pipeline_ns = read_params()["pipelineNamespace"]
    (rule,) = _ingress(overlay, "ray-head-from-pipeline")
    assert [p["port"] for p in rule["ports"]] == [8265]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": pipeline_ns}}}
    ]


def test_postgres_is_reachable_only_from_mlflow(overlay: Rendered) -> None:
    policy = overlay.one("NetworkPolicy", "postgres-from-mlflow")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "postgres"}
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}]
    assert [p["port"] for p in rule["ports"]] == [5432]


# --- the services themselves -------------------------------------------------------------------


def _mlflow_container(overlay: Rendered) -> dict[str, Any]:
    deployment = overlay.one("Deployment", "mlflow")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_mlflow_proxies_artifacts_and_allows_its_in_cluster_names(overlay: Rendered) -> None:
    container = _mlflow_container(overlay)
    namespace = overlay.one("Deployment", "mlflow")["metadata"]["namespace"]
    args = container["args"]
    assert args[0] == "server" and "--serve-artifacts" in args and "--host=0.0.0.0" in args
    assert "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)" in args
    (hosts_arg,) = [a for a in args if a.startswith("--allowed-hosts=")]
    hosts = hosts_arg.split("=", 1)[1].split(",")
    for host in (
        "mlflow:5000",
        f"mlflow.{namespace}.svc:5000",
        f"mlflow.{namespace}.svc.cluster.local:5000",
    ):
        assert host in hosts, f"--allowed-hosts lacks {host}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"


def test_mlflow_backend_uri_is_assembled_from_the_secret(overlay: Rendered) -> None:
    env = {e["name"]: e for e in _mlflow_container(overlay)["env"]}
    uri = env["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert uri.startswith("postgresql+psycopg2://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@")
    # Kubernetes expands $(VAR) only from variables defined before it.
    names = list(env)
    assert names.index("POSTGRES_PASSWORD") < names.index("MLFLOW_BACKEND_STORE_URI")
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "postgres-mlflow"


def test_postgres_runs_as_uid_999_on_a_persistent_volume(overlay: Rendered) -> None:
    statefulset = overlay.one("StatefulSet", "postgres")
    pod_sc = statefulset["spec"]["template"]["spec"]["securityContext"]
    assert (pod_sc["runAsUser"], pod_sc["runAsGroup"], pod_sc["fsGroup"]) == (999, 999, 999)
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PGDATA"].startswith(mounts[claim["metadata"]["name"]] + "/")


def test_server_versions_match_the_lock(overlay: Rendered) -> None:
    lock = read_lock()
    mlflow_image = _mlflow_container(overlay)["image"]
    mlflow_pattern = rf"ghcr\.io/mlflow/mlflow:v{re.escape(lock['mlflow'])}(-full)?"
    assert re.fullmatch(mlflow_pattern, mlflow_image), mlflow_image
    # The Ray nodes run the kdflow image, which installs ray from the lock
    # (test_manifests_ray.py, test_image_dockerfile.py).
    cluster = overlay.one("RayCluster", "kdflow-ray")
    assert cluster["spec"]["rayVersion"] == lock["ray"]


def test_ray_head_runs_no_work_and_workers_autoscale_from_zero(overlay: Rendered) -> None:
    spec = overlay.one("RayCluster", "kdflow-ray")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head_params = spec["headGroupSpec"]["rayStartParams"]
    assert head_params["num-cpus"] == "0" and head_params["dashboard-host"] == "0.0.0.0"
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
        assert group.get("replicas", 0) <= group["maxReplicas"]


def test_ray_pods_have_memory_backed_dev_shm(overlay: Rendered) -> None:
    cluster = overlay.one("RayCluster", "kdflow-ray")
    for where, pod in iter_pod_specs(cluster):
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            (shm,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
            assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory", where
            assert volumes[shm["name"]]["emptyDir"].get("sizeLimit"), where


# --- hardware per overlay ----------------------------------------------------------------------


# Every overlay is one or the other, so a new overlay cannot skip these checks.
CPU_OVERLAYS = ["dev"]
GPU_OVERLAYS = ["gpu", "gpu-kueue"]
GPU_GROUP, CPU_GROUP = "gpu-workers", "cpu-workers"


def worker_groups(rendered: Rendered) -> dict[str, dict[str, Any]]:
    spec = rendered.one("RayCluster", "kdflow-ray")["spec"]
    return {g["groupName"]: g for g in spec["workerGroupSpecs"]}


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    (container,) = group["template"]["spec"]["containers"]
    return container


def quantity_bytes(value: str) -> int:
    """A memory quantity as the manifests write them ("16Gi", "512Mi", "1024") in bytes."""
    for power, suffix in enumerate(("Ki", "Mi", "Gi", "Ti"), start=1):
        if value.endswith(suffix):
            return int(value.removesuffix(suffix)) * 1024**power
    return int(value)


def tolerates_gpu_taint(pod: dict[str, Any]) -> bool:
    return any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))


def test_every_overlay_is_checked_for_its_hardware() -> None:
    assert sorted(CPU_OVERLAYS + GPU_OVERLAYS) == OVERLAYS


@pytest.mark.parametrize("name", GPU_OVERLAYS)
def test_gpu_overlay_has_a_cpu_group_and_a_gpu_group_both_autoscaled(render, name: str) -> None:
    """Ray Data reads and decodes on CPU pods; training and inference get the GPUs."""
    rendered = render(f"overlays/{name}")
    assert list(worker_groups(rendered)) == [CPU_GROUP, GPU_GROUP]
    spec = rendered.one("RayCluster", "kdflow-ray")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    for group in worker_groups(rendered).values():
        assert group["minReplicas"] == 0 < group["maxReplicas"], group["groupName"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert gpu_count(head) == 0, "the head schedules no work and needs no GPU"


@pytest.mark.parametrize("name", GPU_OVERLAYS)
def test_gpu_group_asks_for_one_gpu_on_gpu_nodes_with_requests_equal_to_limits(
    render, name: str
) -> None:
    group = worker_groups(render(f"overlays/{name}"))[GPU_GROUP]
    pod = group["template"]["spec"]
    resources = ray_container(group)["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
    # Guaranteed QoS, and Ray sizes its object store from the memory limit.
    assert resources["requests"] == resources["limits"]
    assert tolerates_gpu_taint(pod)
    assert pod.get("nodeSelector") or pod.get("affinity", {}).get("nodeAffinity")


@pytest.mark.parametrize("name", GPU_OVERLAYS)
def test_cpu_group_asks_for_no_gpu_and_stays_off_gpu_nodes(render, name: str) -> None:
    group = worker_groups(render(f"overlays/{name}"))[CPU_GROUP]
    pod = group["template"]["spec"]
    assert gpu_count(ray_container(group)) == 0
    assert "num-gpus" not in group["rayStartParams"]
    assert not tolerates_gpu_taint(pod)
    assert not any("nvidia" in key for key in pod.get("nodeSelector", {}))


@pytest.mark.parametrize("name", GPU_OVERLAYS)
def test_gpu_group_offers_ray_fewer_cpus_than_it_has(render, name: str) -> None:
    """CPU-only Ray tasks then fill the CPU group, and the GPU pod's cores stay with the
    training worker's own threads; each GPU task or actor still finds its one CPU."""
    groups = worker_groups(render(f"overlays/{name}"))
    gpu = groups[GPU_GROUP]
    logical = int(gpu["rayStartParams"]["num-cpus"])
    assert 1 <= logical < int(ray_container(gpu)["resources"]["limits"]["cpu"])
    assert "num-cpus" not in groups[CPU_GROUP]["rayStartParams"]  # all of its cores
    # Ray node labels for label_selector, one value per pool.
    assert groups[CPU_GROUP]["labels"] == {"kdflow.dev/pool": "cpu"}
    assert gpu["labels"] == {"kdflow.dev/pool": "gpu"}


@pytest.mark.parametrize("name", GPU_OVERLAYS)
def test_gpu_group_runs_like_the_cpu_group_with_a_larger_dev_shm(render, name: str) -> None:
    """Same security context, environment (token, MLflow, S3) and volumes as the base's
    worker: the GPU group is the base's group with only its hardware changed."""
    groups = worker_groups(render(f"overlays/{name}"))
    cpu_pod, gpu_pod = (groups[g]["template"]["spec"] for g in (CPU_GROUP, GPU_GROUP))
    cpu, gpu = ray_container(groups[CPU_GROUP]), ray_container(groups[GPU_GROUP])
    assert gpu_pod["securityContext"] == cpu_pod["securityContext"]
    assert gpu_pod["automountServiceAccountToken"] is False
    # The kdflow image is CUDA 12.8 throughout (infra/Dockerfile): no separate GPU tag.
    for field in ("env", "securityContext", "volumeMounts", "image"):
        assert gpu[field] == cpu[field], field
    cpu_volumes = {v["name"]: v for v in cpu_pod["volumes"]}
    gpu_volumes = {v["name"]: v for v in gpu_pod["volumes"]}
    assert gpu_volumes.keys() == cpu_volumes.keys()
    assert {n: v for n, v in gpu_volumes.items() if n != "dshm"} == {
        n: v for n, v in cpu_volumes.items() if n != "dshm"
    }
    shm = [quantity_bytes(v["dshm"]["emptyDir"]["sizeLimit"]) for v in (cpu_volumes, gpu_volumes)]
    assert shm[1] > shm[0]
    memory_limit = quantity_bytes(gpu["resources"]["limits"]["memory"])
    assert shm[1] < memory_limit  # a memory-backed emptyDir counts against that limit


@pytest.mark.parametrize("name", CPU_OVERLAYS)
def test_cpu_overlay_asks_for_no_gpu(render, name: str) -> None:
    rendered = render(f"overlays/{name}")
    assert [w for w, _pod, c in containers(rendered) if gpu_count(c)] == []
    tolerations = [
        t
        for obj in rendered.objects
        for _w, pod in iter_pod_specs(obj)
        for t in pod.get("tolerations", [])
    ]
    assert not any(t.get("key") == "nvidia.com/gpu" for t in tolerations)
    assert not [
        i for obj in rendered.objects for i in images(obj) if re.search(r"-(gpu|cu\d+)$", i)
    ]
