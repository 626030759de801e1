"""Where the files under test live, readers for the small ones, and the kustomize build."""

from __future__ import annotations

import importlib.util
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
OVERLAYS = sorted(
    p.name for p in (MANIFESTS / "overlays").iterdir() if (p / "kustomization.yaml").is_file()
)
SECRET_TEMPLATES = "base/secrets"
EXAMPLES = MANIFESTS / "examples"
DOCKERFILE = REPO / "infra" / "Dockerfile"
INSTALLER = REPO / "infra" / "tools" / "install_kubectl.py"
# KubeRay's CRDs sit beside the repository, not in it (see ../shared/crds/README.md).
CRD_DIR = REPO.parent / "shared" / "crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}


def read_lock() -> dict[str, str]:
    """requirements.lock as {canonical name: version}."""
    pins: dict[str, str] = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name.split("[")[0])] = version.strip()
    return pins


def read_params() -> dict[str, str]:
    """manifests/base/params.env: the namespaces outside kdflow."""
    params: dict[str, str] = {}
    for line in (MANIFESTS / "base" / "params.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            params[key.strip()] = value.strip()
    return params


def load_installer() -> ModuleType:
    """infra/tools/install_kubectl.py as a module (infra/ is not a package)."""
    spec = importlib.util.spec_from_file_location("install_kubectl", INSTALLER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Rendered:
    """One kustomization's output."""

    name: str
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("kind") == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind}/{name}, found {len(found)}"
        return found[0]


def kustomize(kubectl: Path, directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(kubectl), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return [o for o in yaml.safe_load_all(result.stdout) if o]
