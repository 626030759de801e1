"""Write infra/requirements-image.lock: the kdflow image's dependencies, pinned and hashed.

infra/Dockerfile installs exactly this file, with ``pip install --require-hashes --no-deps``:
every file pip downloads must have one of the sha256 sums listed for it, and nothing is
resolved at build time. The file is the runtime part of requirements.lock (pyproject.toml's
``[project].dependencies``, its extras, and the build backend), resolved by uv for the image's
platform (CPython 3.11, linux x86_64, manylinux_2_28) with requirements.lock as a constraint, so
the image runs the versions the tests ran; uv records the hash of every file PyPI serves for
each pin (https://docs.astral.sh/uv/pip/compile/).

    pip install uv && python infra/tools/lock_image.py          # rewrite both locks
    python infra/tools/lock_image.py --check                    # exit 1 if it is stale

!!! torch, and what only torch pulls in on that platform (triton, nvidia-*, cuda-*), are left
out: the base image, pinned by digest, carries torch built for CUDA 12.8 from PyTorch's own
index, which PyPI does not serve (PyPI's linux torch is another CUDA build), so hashes from PyPI
could never match it. The Dockerfile checks the base's torch instead of installing one.

Run it after changing requirements.lock or pyproject.toml's dependencies; it needs PyPI.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"
DEV_LOCK = REPO / "requirements.lock"
IMAGE_LOCK = REPO / "infra" / "requirements-image.lock"
# The build backend alone, installed first: pip then builds the lock's few sdists (and kdflow)
# with --no-build-isolation, because an isolated build would fetch setuptools unhashed.
BUILD_LOCK = REPO / "infra" / "requirements-build.lock"
# The image's interpreter and platform (the base image: Ubuntu, glibc >= 2.28, x86_64).
PYTHON_VERSION = "3.11"
PYTHON_PLATFORM = "x86_64-manylinux_2_28"
DEFAULT_INDEX = "https://pypi.org/simple"
# Provided by the base image, never by the lock (see the module docstring).
FROM_BASE = "torch"
COMMAND = "python infra/tools/lock_image.py"
BUILD_INPUT = "build-system.in"  # pyproject.toml's [build-system] requires, as uv's input


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a requirements file as {canonical name: version}."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip().rstrip("\\").strip()
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)", line)
        if match:
            pins[canonical(match[1])] = match[3]
    return pins


def read_parents(text: str) -> dict[str, set[str]]:
    """uv's ``# via a, b`` annotations (``--annotation-style line``) as {package: its parents}.

    A parent is a canonical package name, or an input kept verbatim (``-r file``,
    ``-c file``, ``kdflow (pyproject.toml)``), which is never a package's name.
    """
    parents: dict[str, set[str]] = {}
    current: str | None = None
    for raw in text.splitlines():
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==", raw)
        if match:
            current = canonical(match[1])
            parents[current] = set()
        # Without hashes the annotation shares the pin's line; with them it follows the hashes.
        _, via_mark, vias = raw.partition("# via ")
        if current and via_mark:
            for via in vias.strip().split(", "):
                is_input = via.startswith("-") or "(" in via
                parents[current].add(via if is_input else canonical(via))
    return parents


def _drop_constraint_annotations(text: str) -> str:
    """uv lists the -c files as parents of each pin: noise here, the pins come from them."""
    lines = []
    for raw in text.splitlines():
        if raw.strip().startswith("# via "):
            indent = raw[: len(raw) - len(raw.lstrip())]
            kept = [v for v in raw.strip().removeprefix("# via ").split(", ") if v[:3] != "-c "]
            if not kept:
                continue
            raw = f"{indent}# via {', '.join(kept)}"
        lines.append(raw)
    return "\n".join(lines) + "\n"


def provided_by_base(parents: dict[str, set[str]], dev_pins: Iterable[str]) -> set[str]:
    """torch, and every package only torch's tree needs that the dev lock does not pin.

    The dev lock holds what the CPU torch needs too (sympy, filelock, ...): those stay in the
    image lock. What is left is the CUDA stack of PyPI's torch build.
    """
    keep = set(dev_pins)
    excluded = {FROM_BASE}
    changed = True
    while changed:
        changed = False
        for package, via in parents.items():
            if package in excluded or package in keep or not via:
                continue
            if via <= excluded:
                excluded.add(package)
                changed = True
    return excluded


def find_uv() -> str:
    try:
        from uv import find_uv_bin  # the `uv` wheel's own locator

        return find_uv_bin()
    except ImportError:
        found = shutil.which("uv")
        if found:
            return found
    raise SystemExit("error: uv is not installed: `pip install uv` (or see docs.astral.sh/uv)")


def build_requirements() -> list[str]:
    return list(tomllib.loads(PYPROJECT.read_text())["build-system"]["requires"])


def compile_lock(
    uv: str,
    workdir: Path,
    index: str,
    sources: Sequence[Path],
    constraints: Sequence[Path],
    extra: Sequence[str],
) -> str:
    out = workdir / "out.txt"
    command = [
        uv, "pip", "compile", *[str(s) for s in sources],
        *[a for c in constraints for a in ("-c", str(c))],
        "--python-version", PYTHON_VERSION,
        "--python-platform", PYTHON_PLATFORM,
        "--default-index", index,
        "--annotation-style", "line",
        "--custom-compile-command", COMMAND,
        "--quiet", "-o", str(out), *extra,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)}\n{result.stderr}")
    # uv names the inputs by the paths it was given: name them as the repository does.
    text = out.read_text()
    for path in sources:
        if path.name == BUILD_INPUT:
            text = text.replace(str(path), "pyproject.toml [build-system]")
    return text.replace(str(PYPROJECT), PYPROJECT.name).replace(str(DEV_LOCK), DEV_LOCK.name)


def lock(index: str = DEFAULT_INDEX) -> dict[Path, str]:
    """{lock file: its text}: resolve once, drop what the base provides, resolve with hashes."""
    uv = find_uv()
    dev_pins = read_pins(DEV_LOCK.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        build_in = workdir / BUILD_INPUT
        build_in.write_text("\n".join(build_requirements()) + "\n")
        first = compile_lock(uv, workdir, index, [PYPROJECT, build_in], [DEV_LOCK], [])
        excluded = provided_by_base(read_parents(first), dev_pins)
        pinned = workdir / "first-pass.txt"
        pinned.write_text(first)  # the second passes pick the very same versions
        hashed = ["--generate-hashes"]
        no_emit = [a for name in sorted(excluded) for a in ("--no-emit-package", name)]
        image = compile_lock(
            uv, workdir, index, [PYPROJECT, build_in], [DEV_LOCK, pinned], hashed + no_emit
        )
        build = compile_lock(uv, workdir, index, [build_in], [pinned], hashed)
    return {
        IMAGE_LOCK: _drop_constraint_annotations(image),
        BUILD_LOCK: _drop_constraint_annotations(build),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a lock is stale")
    parser.add_argument("--index-url", default=DEFAULT_INDEX, help=f"default: {DEFAULT_INDEX}")
    args = parser.parse_args(argv)
    locks = lock(args.index_url)
    if args.check:
        stale = [p for p, text in locks.items() if not p.is_file() or p.read_text() != text]
        for path in stale:
            print(f"{path.relative_to(REPO)} is stale: run `{COMMAND}`", file=sys.stderr)
        return 1 if stale else 0
    for path, text in locks.items():
        path.write_text(text)
        print(f"{path.relative_to(REPO)}: {len(read_pins(text))} pins, each with its hashes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
