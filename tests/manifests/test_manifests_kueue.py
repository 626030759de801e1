"""Where the cluster runs Kueue, the gpu-kueue overlay queues the RayCluster in a LocalQueue of
its own namespace, as an elastic job (Kueue admits an autoscaling RayCluster no other way); the
other overlays carry nothing of Kueue, so they apply where Kueue is not installed.

Every overlay is rendered with the real `kubectl kustomize` (conftest.py); the LocalQueue's
schema is checked in test_manifests_render.py.
"""

from __future__ import annotations

import copy
from typing import Any

from manifest_files import Rendered

KUEUE_OVERLAYS = ["gpu-kueue"]
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
ELASTIC_JOB = "kueue.x-k8s.io/elastic-job"
# Kueue before v0.18 takes at most 8 PodSets in a Workload (the head and 7 worker groups; 18
# from v0.19), and the name "head" is the head's PodSet.
MAX_WORKER_GROUPS = 7


def ray_cluster(rendered: Rendered) -> dict[str, Any]:
    return rendered.one("RayCluster", "kdflow-ray")


def kueue_keys(obj: dict[str, Any]) -> list[str]:
    """The Kueue labels and annotations an object carries."""
    meta = obj["metadata"]
    keys = [*meta.get("labels", {}), *meta.get("annotations", {})]
    return [k for k in keys if k.split("/", 1)[0] == "kueue.x-k8s.io"]


def without_overlay_label(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies (the rendered objects are shared by the session) without kdflow.dev/overlay."""
    found = copy.deepcopy(objects)
    for obj in found:
        obj["metadata"].get("labels", {}).pop("kdflow.dev/overlay", None)
    return found


def test_kueue_overlay_queues_the_ray_cluster_in_the_local_queue_it_renders(render) -> None:
    for name in KUEUE_OVERLAYS:
        rendered = render(f"overlays/{name}")
        (queue,) = rendered.of_kind("LocalQueue")
        labels = ray_cluster(rendered)["metadata"]["labels"]
        assert labels[QUEUE_LABEL] == queue["metadata"]["name"]
        assert queue["spec"]["clusterQueue"], "the LocalQueue names no ClusterQueue"


def test_local_queue_is_in_the_ray_clusters_namespace(render) -> None:
    """A queue-name label means a LocalQueue of the job's own namespace."""
    for name in KUEUE_OVERLAYS:
        rendered = render(f"overlays/{name}")
        (namespace,) = rendered.of_kind("Namespace")
        (queue,) = rendered.of_kind("LocalQueue")
        cluster = ray_cluster(rendered)
        assert queue["metadata"]["namespace"] == cluster["metadata"]["namespace"]
        assert queue["metadata"]["namespace"] == namespace["metadata"]["name"]


def test_an_autoscaled_queued_cluster_is_an_elastic_job(render) -> None:
    """Kueue's webhook rejects a queued RayCluster with the autoscaler on unless it is an elastic
    job (feature gate ElasticJobsViaWorkloadSlices and this annotation)."""
    for name in KUEUE_OVERLAYS:
        cluster = ray_cluster(render(f"overlays/{name}"))
        assert cluster["spec"]["enableInTreeAutoscaling"] is True
        assert cluster["metadata"]["annotations"][ELASTIC_JOB] == "true"


def test_kueue_can_admit_every_worker_group(render) -> None:
    for name in KUEUE_OVERLAYS:
        spec = ray_cluster(render(f"overlays/{name}"))["spec"]
        groups = [g["groupName"] for g in spec["workerGroupSpecs"]]
        assert 1 <= len(groups) <= MAX_WORKER_GROUPS
        assert "head" not in groups


def test_the_component_adds_the_local_queue_and_the_clusters_metadata_only(render) -> None:
    """gpu-kueue is gpu plus a LocalQueue: the same objects and specs, the RayCluster with its
    queue label and elastic-job annotation."""
    gpu, queued = render("overlays/gpu"), render("overlays/gpu-kueue")
    added = [o for o in queued.objects if o["kind"] == "LocalQueue"]
    assert len(added) == 1
    rest = without_overlay_label([o for o in queued.objects if o["kind"] != "LocalQueue"])
    cluster = next(o for o in rest if o["kind"] == "RayCluster")
    assert sorted(kueue_keys(cluster)) == [ELASTIC_JOB, QUEUE_LABEL]
    meta = cluster["metadata"]
    meta["labels"].pop(QUEUE_LABEL)
    meta["annotations"].pop(ELASTIC_JOB)
    if not meta["annotations"]:
        meta.pop("annotations")
    assert rest == without_overlay_label(gpu.objects)


def test_only_kueue_overlays_carry_anything_of_kueue(overlay: Rendered) -> None:
    """An overlay without the component must apply where Kueue is not installed: no
    LocalQueue kind the API server does not know, no label naming a queue that does not exist."""
    kueue_objects = [o for o in overlay.objects if o["apiVersion"].startswith("kueue.x-k8s.io/")]
    labelled = [o["metadata"]["name"] for o in overlay.objects if kueue_keys(o)]
    if overlay.name.removeprefix("overlays/") in KUEUE_OVERLAYS:
        assert [o["kind"] for o in kueue_objects] == ["LocalQueue"]
        assert labelled == ["kdflow-ray"]
    else:
        assert kueue_objects == [] and labelled == []


def test_example_rayjobs_on_the_cluster_are_not_queued(example_objects) -> None:
    """A RayJob that runs on kdflow-ray (clusterSelector) works inside the cluster's quota:
    Kueue >= v0.14.2 ignores it, older versions reject it when it carries a queue label."""
    rayjobs = [o for o in example_objects if o["kind"] == "RayJob"]
    assert rayjobs, "manifests/examples/ holds no RayJob"
    for job in rayjobs:
        if job["spec"].get("clusterSelector"):
            assert "rayClusterSpec" not in job["spec"]
            assert kueue_keys(job) == [], job["metadata"]
