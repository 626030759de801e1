"""Pin every container image kdflow uses to the digest its tag points at now.

Where images are named, and what this writes there:

* ``manifests/base/kustomization.yaml``, its ``images:`` block: one entry per image any manifest
  under ``manifests/base`` runs (an image without one is added), each with ``newTag`` (kept, for
  people) and ``digest``. kustomize then renders ``name:tag@sha256:...``, and the kubelet pulls
  by the digest.
* ``infra/Dockerfile``: the ``# syntax=`` frontend and the ``FROM`` base, as
  ``name:tag@sha256:...``.
* ``pipelines/distillation/pipeline.py``: ``DEFAULT_IMAGE``, the pipeline's ``--image``, kept equal
  to the kdflow image's entry.

A digest comes from the registry, never from a guess: ``crane digest``, ``docker buildx
imagetools inspect``, ``skopeo inspect --raw`` or ``regctl image digest``, whichever is on PATH
(they use your ``docker login`` credentials), else the registry's HTTP API with an anonymous
token (public images only). Each is the digest of what the tag names (for a multi-platform image,
its index), so every platform stays pinned.

It needs PyYAML (kdflow's own dependency: run it with .venv/bin/python).

    python infra/tools/pin_images.py                  # resolve every image and write the pins
    python infra/tools/pin_images.py --check          # exit 1, listing each image not pinned
    python infra/tools/pin_images.py --only ghcr.io/kdflow/kdflow        # after a push
    python infra/tools/pin_images.py --set ghcr.io/kdflow/kdflow=sha256:<digest from the push>

Run it after pushing the kdflow image and whenever a tag changes; review the diff (a digest
that moved under an unchanged tag means the tag was pushed again).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZATION = REPO / "manifests" / "base" / "kustomization.yaml"
DOCKERFILE = REPO / "infra" / "Dockerfile"
PIPELINE = REPO / "pipelines" / "distillation" / "pipeline.py"
COMPONENT_IMAGE = "ghcr.io/kdflow/kdflow"  # built by infra/Dockerfile
COMMAND = "python infra/tools/pin_images.py"
# Stands where a digest belongs until this tool has resolved it; not a digest, so Docker
# refuses to build from it (`invalid reference format`) instead of pulling an unpinned tag.
PLACEHOLDER = "sha256:unresolved-run-infra-tools-pin-images"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

Resolver = Callable[[str], str]  # "name:tag" -> "sha256:..."


# --- references --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    name: str  # as written: postgres, ghcr.io/mlflow/mlflow
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> Reference:
        rest, _, digest = text.partition("@")
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:  # a colon before the last slash is a registry's port
            return cls(rest[:colon], rest[colon + 1 :], digest or None)
        return cls(rest, None, digest or None)

    @property
    def tagged(self) -> str:
        return f"{self.name}:{self.tag}" if self.tag else self.name

    def __str__(self) -> str:
        return self.tagged + (f"@{self.digest}" if self.digest else "")

    @property
    def pinned(self) -> bool:
        return bool(self.digest and DIGEST.fullmatch(self.digest))


def registry_and_repository(name: str) -> tuple[str, str]:
    """Docker's normalisation: ``postgres`` is ``registry-1.docker.io``, ``library/postgres``."""
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = "docker.io", name
    if registry == "docker.io":
        registry = "registry-1.docker.io"
        if "/" not in repository:
            repository = f"library/{repository}"
    return registry, repository


# --- resolvers ---------------------------------------------------------------------------------


def _run(command: list[str]) -> bytes:
    result = subprocess.run(command, capture_output=True, timeout=120, check=False)
    if result.returncode != 0:
        raise LookupError(f"{' '.join(command)}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def _crane(ref: str) -> str:
    return _run(["crane", "digest", ref]).decode().strip()


def _docker(ref: str) -> str:
    command = ["docker", "buildx", "imagetools", "inspect", ref, "--format", "{{.Manifest.Digest}}"]
    return _run(command).decode().strip()


def _skopeo(ref: str) -> str:
    # The raw manifest's own bytes: their sha256 is the digest the registry serves them under.
    raw = _run(["skopeo", "inspect", "--raw", f"docker://{ref}"])
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _regctl(ref: str) -> str:
    return _run(["regctl", "image", "digest", ref]).decode().strip()


MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def parse_challenge(header: str) -> dict[str, str]:
    """``Bearer realm="...",service="...",scope="..."`` -> its parameters."""
    scheme, _, params = header.partition(" ")
    if scheme.lower() != "bearer":
        raise LookupError(f"registry asks for {scheme} auth: use crane or docker after a login")
    return dict(re.findall(r'(\w+)="([^"]*)"', params))


def _http(ref: str, urlopen: Callable[..., object] = urllib.request.urlopen) -> str:
    reference = Reference.parse(ref)
    registry, repository = registry_and_repository(reference.name)
    url = f"https://{registry}/v2/{repository}/manifests/{reference.tag or 'latest'}"
    headers = {"Accept": MANIFEST_TYPES}
    for attempt in range(2):
        request = urllib.request.Request(url, headers=headers, method="GET")
        try:
            with urlopen(request, timeout=30) as response:  # type: ignore[attr-defined]
                body = response.read()
                digest = response.headers.get("Docker-Content-Digest")
                return digest or "sha256:" + hashlib.sha256(body).hexdigest()
        except urllib.error.HTTPError as err:
            if err.code != 401 or attempt:
                raise LookupError(f"GET {url}: HTTP {err.code}") from err
            params = parse_challenge(err.headers.get("WWW-Authenticate", ""))
            realm = params.pop("realm")
            token_url = f"{realm}?{urllib.parse.urlencode(params)}"
            with urlopen(token_url, timeout=30) as response:  # type: ignore[attr-defined]
                answer = json.load(response)
            headers["Authorization"] = f"Bearer {answer.get('token') or answer['access_token']}"
    raise AssertionError("unreachable")


RESOLVERS: dict[str, Resolver] = {
    "crane": _crane,
    "docker": _docker,
    "skopeo": _skopeo,
    "regctl": _regctl,
    "http": _http,
}


def _has_buildx() -> bool:
    try:
        _run(["docker", "buildx", "version"])
    except (LookupError, OSError, subprocess.TimeoutExpired):
        return False
    return True


def default_resolver() -> str:
    for name in ("crane", "docker", "skopeo", "regctl"):
        if shutil.which(name) and (name != "docker" or _has_buildx()):
            return name
    return "http"


def checked(resolve: Resolver) -> Resolver:
    """Wrap a resolver: what comes back must be a sha256 digest, or nothing is written."""

    def _resolve(ref: str) -> str:
        try:
            digest = resolve(ref)
        except (OSError, urllib.error.URLError) as err:
            raise LookupError(f"{ref}: {err}") from err
        if not DIGEST.fullmatch(digest):
            raise LookupError(f"{ref}: resolver answered {digest!r}, not a sha256 digest")
        return digest

    return _resolve


# --- kustomization.yaml: the images: block -----------------------------------------------------


def _images_block(lines: list[str]) -> tuple[int, int]:
    """[start, end) of the top-level ``images:`` block: the key and its indented/``-`` lines."""
    starts = [i for i, line in enumerate(lines) if re.fullmatch(r"images:\s*(#.*)?", line)]
    if len(starts) != 1:
        raise ValueError("expected one top-level `images:` key")
    end = starts[0] + 1
    while end < len(lines) and (lines[end].startswith(("-", " ")) or not lines[end].strip()):
        end += 1
    while end > starts[0] + 1 and not lines[end - 1].strip():
        end -= 1  # blank lines after the block belong to what follows
    return starts[0], end


def read_images(text: str) -> list[dict[str, str]]:
    start, end = _images_block(text.splitlines())
    entries = yaml.safe_load("\n".join(text.splitlines()[start:end]))["images"] or []
    return [{k: str(v) for k, v in entry.items()} for entry in entries]


def write_images(text: str, entries: Iterable[dict[str, str]]) -> str:
    """``text`` with its ``images:`` block rewritten from ``entries``; nothing else changes."""
    lines = text.splitlines()
    start, end = _images_block(lines)
    block = ["images:"]
    for entry in entries:
        unknown = set(entry) - {"name", "newName", "newTag", "digest"}
        if unknown:
            raise ValueError(f"images entry {entry['name']}: unexpected {sorted(unknown)}")
        block.append(f"- name: {entry['name']}")
        if entry.get("newName"):
            block.append(f"  newName: {entry['newName']}")
        if entry.get("newTag"):
            block.append(f"  newTag: {json.dumps(entry['newTag'])}")
        if entry.get("digest"):
            block.append(f"  digest: {entry['digest']}")
    trailing = "\n" if text.endswith("\n") else ""
    return "\n".join(lines[:start] + block + lines[end:]) + trailing


def entry_reference(entry: dict[str, str]) -> Reference:
    return Reference(
        entry.get("newName") or entry["name"], entry.get("newTag"), entry.get("digest")
    )


IMAGE_LINE = re.compile(r"^\s*(?:-\s+)?image:\s*[\"']?([^\"'\s#]+)", re.MULTILINE)


def manifest_images(directory: Path) -> list[Reference]:
    """Every ``image:`` written in the YAML files under ``directory``, in order, once each."""
    found: dict[str, Reference] = {}
    for path in sorted(directory.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            for match in IMAGE_LINE.finditer(path.read_text()):
                found.setdefault(match[1], Reference.parse(match[1]))
    return list(found.values())


def with_missing_entries(
    entries: list[dict[str, str]], images: Iterable[Reference]
) -> list[dict[str, str]]:
    """An entry (name and tag as written) for each image the block does not name yet."""
    entries = [dict(e) for e in entries]
    named = {e["name"] for e in entries}
    for image in images:
        if image.name not in named:
            entry = {"name": image.name}
            if image.tag:
                entry["newTag"] = image.tag
            if image.digest:
                entry["digest"] = image.digest
            entries.append(entry)
            named.add(image.name)
    return entries


# --- infra/Dockerfile and pipeline.py ----------------------------------------------------------

SYNTAX_LINE = re.compile(r"^(# *syntax *= *)(\S+)(.*)$", re.MULTILINE)
FROM_LINE = re.compile(r"^(FROM\s+(?:--platform=\S+\s+)?)(\S+)(.*)$", re.MULTILINE)
DEFAULT_IMAGE_LINE = re.compile(r'^(DEFAULT_IMAGE\s*=\s*")([^"]+)(".*)$', re.MULTILINE)


def dockerfile_images(text: str) -> list[Reference]:
    refs = [m[2] for m in SYNTAX_LINE.finditer(text)] + [m[2] for m in FROM_LINE.finditer(text)]
    return [Reference.parse(r) for r in refs if "$" not in r]


def _replace_refs(text: str, pattern: re.Pattern[str], pins: dict[str, str]) -> str:
    def _sub(match: re.Match[str]) -> str:
        ref = Reference.parse(match[2])
        digest = pins.get(ref.tagged)
        return f"{match[1]}{ref.tagged}@{digest}{match[3]}" if digest else match[0]

    return pattern.sub(_sub, text)


# --- the whole run -----------------------------------------------------------------------------


@dataclass
class Files:
    kustomization: Path = KUSTOMIZATION
    dockerfile: Path = DOCKERFILE
    pipeline: Path = PIPELINE
    component_image: str = COMPONENT_IMAGE
    texts: dict[Path, str] = field(default_factory=dict)

    def read(self, path: Path) -> str:
        if path not in self.texts:
            self.texts[path] = path.read_text()
        return self.texts[path]


def unpinned(files: Files) -> list[str]:
    """What is not pinned by a digest yet, one line each (empty: all pinned)."""
    problems = []
    entries = read_images(files.read(files.kustomization))
    for image in manifest_images(files.kustomization.parent):
        if image.name not in {e["name"] for e in entries}:
            problems.append(f"{files.kustomization.name}: no images: entry for {image}")
    for entry in entries:
        if not entry_reference(entry).pinned:
            problems.append(f"{files.kustomization.name}: {entry_reference(entry)} has no digest")
    for ref in dockerfile_images(files.read(files.dockerfile)):
        if not ref.pinned:
            problems.append(f"{files.dockerfile.name}: {ref} is not pinned by a digest")
    component = [e for e in entries if e["name"] == files.component_image]
    if component and files.pipeline.is_file():
        default = DEFAULT_IMAGE_LINE.search(files.read(files.pipeline))
        expected = str(entry_reference(component[0]))
        if default and default[2] != expected:
            problems.append(f"{files.pipeline.name}: DEFAULT_IMAGE {default[2]} is not {expected}")
    return problems


def pin(
    files: Files,
    resolve: Resolver,
    only: Sequence[str] = (),
    given: dict[str, str] | None = None,
) -> dict[Path, str]:
    """{path: new text} with each image's digest resolved (or ``given``, by image name)."""
    given = dict(given or {})
    for name, digest in given.items():
        if not DIGEST.fullmatch(digest):
            raise LookupError(f"{name}={digest}: not a sha256:<64 hex> digest")
    entries = with_missing_entries(
        read_images(files.read(files.kustomization)),
        manifest_images(files.kustomization.parent),
    )
    dockerfile = files.read(files.dockerfile)
    wanted = [entry_reference(e) for e in entries] + dockerfile_images(dockerfile)
    unknown = sorted({*only, *given} - {r.name for r in wanted} - {e["name"] for e in entries})
    if unknown:
        raise LookupError(f"not an image of kdflow's: {', '.join(unknown)}")
    pins: dict[str, str] = {}  # "name:tag" -> digest
    for entry in entries:
        ref = entry_reference(entry)
        if only and entry["name"] not in only and ref.name not in only:
            continue
        digest = given.get(entry["name"]) or given.get(ref.name) or pins.get(ref.tagged)
        entry["digest"] = pins[ref.tagged] = digest or resolve(ref.tagged)
    for ref in dockerfile_images(dockerfile):
        if ref.tagged not in pins and (not only or ref.name in only):
            pins[ref.tagged] = given.get(ref.name) or resolve(ref.tagged)
    out = {
        files.kustomization: write_images(files.read(files.kustomization), entries),
        files.dockerfile: _replace_refs(
            _replace_refs(dockerfile, SYNTAX_LINE, pins), FROM_LINE, pins
        ),
    }
    component = [e for e in entries if e["name"] == files.component_image]
    if component and files.pipeline.is_file():
        ref = str(entry_reference(component[0]))
        out[files.pipeline] = DEFAULT_IMAGE_LINE.sub(
            lambda m: f"{m[1]}{ref}{m[3]}", files.read(files.pipeline), count=1
        )
    return {path: text for path, text in out.items() if text != files.read(path)}


def _given(values: Sequence[str]) -> dict[str, str]:
    given = {}
    for value in values:
        name, sep, digest = value.partition("=")
        if not sep:
            raise SystemExit(f"error: --set {value}: expected NAME=sha256:<digest>")
        given[name] = digest
    return given


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="list what is unpinned; exit 1 if any")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="pin only NAME")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=DIGEST", help="use this digest"
    )
    parser.add_argument("--resolver", choices=sorted(RESOLVERS), help="default: the first found")
    args = parser.parse_args(argv)
    files = Files()
    if args.check:
        problems = unpinned(files)
        for problem in problems:
            print(f"unpinned: {problem}", file=sys.stderr)
        if problems:
            print(f"run `{COMMAND}` where the registries are reachable", file=sys.stderr)
        return 1 if problems else 0
    resolver = args.resolver or default_resolver()
    try:
        changed = pin(files, checked(RESOLVERS[resolver]), args.only, _given(args.set))
    except LookupError as err:
        print(f"error ({resolver}): {err}", file=sys.stderr)
        return 1
    for path, text in changed.items():
        path.write_text(text)
        print(f"pinned: {path.relative_to(REPO)}")
    if not changed:
        print("nothing changed: every pin is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
