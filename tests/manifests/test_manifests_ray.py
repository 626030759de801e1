"""The RayCluster runs the kdflow component image and takes its token from a Secret, so
`--ray-address http://kdflow-ray-head-svc.kdflow.svc:8265` works on a cluster without hand edits.

Every overlay is rendered with the real `kubectl kustomize` (conftest.py); the image is the one
`infra/Dockerfile` builds, as `DEFAULT_IMAGE` in pipelines/distillation/pipeline.py names it.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path
from typing import Any

import yaml
from manifest_checks import CREDENTIAL_NAME, credential_violations, iter_containers
from manifest_files import DOCKERFILE, MANIFESTS, REPO, Rendered, kustomize
from test_image_dockerfile import arg_defaults, expand, parse_dockerfile

RAY_SECRET = "kdflow-ray"
RAY_SECRET_KEY = "auth_token"  # KubeRay reads this key of authOptions.secretName itself
PIPELINE = REPO / "pipelines" / "distillation" / "pipeline.py"


def component_image() -> str:
    """`DEFAULT_IMAGE` of the pipeline, read without importing kfp."""
    for node in ast.parse(PIPELINE.read_text()).body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == ["DEFAULT_IMAGE"]
            and isinstance(node.value, ast.Constant)
        ):
            return str(node.value.value)
    raise AssertionError(f"{PIPELINE} assigns no DEFAULT_IMAGE string")


def dockerfile_user_and_home() -> tuple[int, str]:
    instructions = parse_dockerfile(DOCKERFILE)
    args = arg_defaults(instructions)
    user = [expand(a, args) for k, a in instructions if k == "USER"][-1]
    envs = " ".join(expand(a, args) for k, a in instructions if k == "ENV")
    homes = [w.split("=", 1)[1] for w in envs.split() if w.startswith("HOME=")]
    assert homes, "infra/Dockerfile sets no HOME"
    return int(user.split(":")[0]), homes[-1]


def ray_cluster(rendered: Rendered) -> dict[str, Any]:
    return rendered.one("RayCluster", "kdflow-ray")


def ray_containers(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Ray containers KubeRay starts `ray start` in: the head's and each worker group's."""
    spec = cluster["spec"]
    found = {"head": spec["headGroupSpec"]["template"]["spec"]["containers"][0]}
    for group in spec["workerGroupSpecs"]:
        found[group["groupName"]] = group["template"]["spec"]["containers"][0]
    return found


def test_head_and_workers_run_the_component_image(overlay: Rendered) -> None:
    image = component_image()
    containers = ray_containers(ray_cluster(overlay))
    assert len(containers) >= 2, "no worker group"
    assert {name: c["image"] for name, c in containers.items()} == dict.fromkeys(containers, image)
    # The autoscaler, unset, runs the head's image as well.
    assert "image" not in (ray_cluster(overlay)["spec"].get("autoscalerOptions") or {})


def test_ray_pods_run_as_the_image_user_with_a_writable_home(overlay: Rendered) -> None:
    uid, home = dockerfile_user_and_home()
    spec = ray_cluster(overlay)["spec"]
    pods = [spec["headGroupSpec"]["template"]["spec"]]
    pods += [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    for pod in pods:
        sc = pod["securityContext"]
        assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (uid, uid, uid)
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        # readOnlyRootFilesystem: Ray writes ~/.cache and ~/.ray, so HOME is an emptyDir.
        assert "emptyDir" in volumes[mounts[home]], mounts


def test_token_auth_is_on_and_the_token_comes_from_the_secret(overlay: Rendered) -> None:
    cluster = ray_cluster(overlay)
    assert cluster["spec"]["authOptions"] == {"mode": "token", "secretName": RAY_SECRET}
    for name, container in ray_containers(cluster).items():
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"] == {"name": "RAY_AUTH_MODE", "value": "token"}, name
        assert env["RAY_AUTH_TOKEN"] == {
            "name": "RAY_AUTH_TOKEN",
            "valueFrom": {
                "secretKeyRef": {"name": RAY_SECRET, "key": RAY_SECRET_KEY, "optional": False}
            },
        }, name


def test_no_credential_is_inline_in_the_ray_cluster(overlay: Rendered) -> None:
    cluster = ray_cluster(overlay)
    assert credential_violations(cluster) == []
    for where, _pod, container in iter_containers(cluster):
        for env in container.get("env") or []:
            if CREDENTIAL_NAME.search(env["name"]):
                assert "value" not in env, f"{where}: {env['name']} has an inline value"
        words = " ".join(container.get("command") or []) + " ".join(container.get("args") or [])
        assert "token" not in words.lower(), f"{where}: a token in its command line"
    for params in [cluster["spec"]["headGroupSpec"].get("rayStartParams") or {}] + [
        g.get("rayStartParams") or {} for g in cluster["spec"]["workerGroupSpecs"]
    ]:
        assert not [k for k in params if CREDENTIAL_NAME.search(k)], params
    assert "Bearer " not in yaml.safe_dump(cluster)


def test_the_ray_secret_template_names_kuberays_key(secret_templates: Rendered) -> None:
    secret = secret_templates.one("Secret", RAY_SECRET)
    assert secret["stringData"] == {RAY_SECRET_KEY: ""}


def test_one_images_entry_moves_the_whole_ray_cluster(kubectl: Path, tmp_path: Path) -> None:
    # A registry of your own: `kustomize edit set image` in base/ changes head and workers alike.
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    base = copy / "base" / "kustomization.yaml"
    kustomization = yaml.safe_load(base.read_text())
    name = component_image().rsplit(":", 1)[0]
    (entry,) = [i for i in kustomization["images"] if i["name"] == name]
    entry.update(newName="registry.example.com/team/kdflow", newTag="9.9.9")
    base.write_text(yaml.safe_dump(kustomization, sort_keys=False))
    for overlay in ("dev", "gpu", "gpu-kueue"):
        rendered = Rendered(overlay, kustomize(kubectl, copy / "overlays" / overlay))
        images = {c["image"] for c in ray_containers(ray_cluster(rendered)).values()}
        assert images == {"registry.example.com/team/kdflow:9.9.9"}, overlay
