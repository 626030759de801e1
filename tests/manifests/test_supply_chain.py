"""Supply chain: every image kdflow runs or builds on is pinned by digest, and every Python
package the image installs is pinned by hash.

The images: every ``image:`` the overlays render (real ``kubectl kustomize``, conftest.py) goes
through an entry of ``manifests/base/kustomization.yaml``'s ``images:`` block, which
``infra/tools/pin_images.py`` fills with digests; the Dockerfile's frontend and base likewise.
The packages: ``infra/requirements-*.lock`` (``infra/tools/lock_image.py``) hash every pin, and
every ``pip install`` in the Dockerfile is hash-checked or offline.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import shutil
import sys
import urllib.error
from email.message import Message
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from manifest_checks import images
from manifest_files import DOCKERFILE, MANIFESTS, REPO, Rendered, kustomize, read_lock
from packaging.utils import canonicalize_name
from test_image_dockerfile import (
    BUILD_LOCK,
    IMAGE_LOCK,
    parse_dockerfile,
    pip_installs,
    read_hashed_lock,
    requirement_files,
)

TOOLS = REPO / "infra" / "tools"
KUSTOMIZATION = MANIFESTS / "base" / "kustomization.yaml"
HEX64 = "[0-9a-f]{64}"
PINNED = re.compile(rf"[^@\s]+:[^@:/\s]+@sha256:{HEX64}")  # name:tag@digest, the tag kept
# !!! Registries were unreachable where the pins were last written (no DNS for docker.io or
# ghcr.io): remove these markers once `python infra/tools/pin_images.py` has run. They are
# strict, so the tests fail (XPASS) the moment every digest is in, as a reminder.
UNRESOLVED = "digests not resolved: run python infra/tools/pin_images.py"


def load_tool(name: str) -> ModuleType:
    """infra/tools/<name>.py as a module (infra/ is not a package)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def pin_images() -> ModuleType:
    return load_tool("pin_images")


@pytest.fixture(scope="module")
def lock_image() -> ModuleType:
    return load_tool("lock_image")


@pytest.fixture(scope="module")
def entries(pin_images: ModuleType) -> list[dict[str, str]]:
    return pin_images.read_images(KUSTOMIZATION.read_text())


def rendered_images(objects: list[dict[str, Any]]) -> set[str]:
    return {image for obj in objects for image in images(obj)}


def dockerfile_refs(pin_images: ModuleType) -> list[str]:
    return [str(r) for r in pin_images.dockerfile_images(DOCKERFILE.read_text())]


# --- images ------------------------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason=UNRESOLVED)
def test_every_rendered_image_is_pinned_by_digest(overlay: Rendered, example_objects) -> None:
    found = rendered_images(overlay.objects) | rendered_images(example_objects)
    assert found and {i for i in found if not PINNED.fullmatch(i)} == set()


@pytest.mark.xfail(strict=True, reason=UNRESOLVED)
def test_dockerfile_frontend_and_base_are_pinned_by_digest(pin_images: ModuleType) -> None:
    refs = dockerfile_refs(pin_images)
    assert len(refs) == 2 and [r for r in refs if not PINNED.fullmatch(r)] == []


def test_every_rendered_image_comes_through_an_images_entry(
    overlay: Rendered, entries: list[dict[str, str]], pin_images: ModuleType
) -> None:
    # kustomize rewrote it, so pin_images.py's digest reaches it: rendered name, tag and digest
    # are an entry's newName (or name), newTag and digest.
    wanted = {str(pin_images.entry_reference(e)) for e in entries}
    assert rendered_images(overlay.objects) - wanted == set()


def test_every_image_written_in_base_has_an_entry(entries, pin_images: ModuleType) -> None:
    # What pin_images.py would add (an image someone wrote into a manifest since): nothing.
    written = pin_images.manifest_images(KUSTOMIZATION.parent)
    assert written and pin_images.with_missing_entries(entries, written) == entries


def test_images_entries_keep_their_tag_and_carry_only_real_digests(entries) -> None:
    assert entries
    for entry in entries:
        assert set(entry) <= {"name", "newName", "newTag", "digest"}, entry
        assert entry.get("newTag"), f"{entry['name']}: no newTag (the tag the digest is of)"
        assert "digest" not in entry or re.fullmatch(f"sha256:{HEX64}", entry["digest"]), entry


def test_dockerfile_pins_are_digests_or_the_placeholder_docker_refuses(
    pin_images: ModuleType,
) -> None:
    # Never a bare tag: until pin_images.py runs, the build fails instead of pulling one.
    refs = dockerfile_refs(pin_images)
    assert len(refs) == 2 and refs[0].startswith("docker/dockerfile:"), refs  # frontend, base
    assert not re.fullmatch(f"sha256:{HEX64}", pin_images.PLACEHOLDER)
    for ref in refs:
        _, _, digest = ref.partition("@")
        assert re.fullmatch(f"sha256:{HEX64}", digest) or digest == pin_images.PLACEHOLDER, ref


def test_pin_check_lists_everything_unpinned(pin_images: ModuleType, entries) -> None:
    problems = pin_images.unpinned(pin_images.Files())
    missing = [e for e in entries if "digest" not in e]
    assert len([p for p in problems if "has no digest" in p]) == len(missing)
    placeholders = [r for r in dockerfile_refs(pin_images) if r.endswith(pin_images.PLACEHOLDER)]
    assert len([p for p in problems if "Dockerfile" in p]) == len(placeholders)


# --- pin_images.py, offline --------------------------------------------------------------------


def fake_digest(ref: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()


@pytest.mark.parametrize(
    ("text", "name", "tag", "registry", "repository"),
    [
        ("postgres:17.6-bookworm", "postgres", "17.6-bookworm", "registry-1.docker.io",
         "library/postgres"),
        ("pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime@sha256:" + "a" * 64, "pytorch/pytorch",
         "2.13.0-cuda12.8-cudnn9-runtime", "registry-1.docker.io", "pytorch/pytorch"),
        ("ghcr.io/mlflow/mlflow:v3.17.2-full", "ghcr.io/mlflow/mlflow", "v3.17.2-full", "ghcr.io",
         "mlflow/mlflow"),
        ("localhost:5000/team/kdflow", "localhost:5000/team/kdflow", None, "localhost:5000",
         "team/kdflow"),
    ],
)  # fmt: skip
def test_references_split_and_normalise_like_docker(
    pin_images: ModuleType, text: str, name: str, tag: str | None, registry: str, repository: str
) -> None:
    ref = pin_images.Reference.parse(text)
    assert (ref.name, ref.tag) == (name, tag)
    assert str(ref) == text
    assert pin_images.registry_and_repository(ref.name) == (registry, repository)


@pytest.fixture
def copies(pin_images: ModuleType, tmp_path: Path) -> Any:
    """pin_images.Files over copies of the manifests, the Dockerfile and pipeline.py."""
    shutil.copytree(MANIFESTS, tmp_path / "manifests")
    (tmp_path / "Dockerfile").write_text(DOCKERFILE.read_text())
    (tmp_path / "pipeline.py").write_text(pin_images.PIPELINE.read_text())
    return lambda: pin_images.Files(
        tmp_path / "manifests" / "base" / "kustomization.yaml",
        tmp_path / "Dockerfile",
        tmp_path / "pipeline.py",
    )


def write(changed: dict[Path, str]) -> None:
    for path, text in changed.items():
        path.write_text(text)


def test_pinning_writes_every_digest_and_changes_nothing_else(
    pin_images: ModuleType, copies: Any, kubectl: Path
) -> None:
    files = copies()
    asked: list[str] = []
    write(pin_images.pin(files, lambda ref: asked.append(ref) or fake_digest(ref)))
    assert len(asked) == len(set(asked)), "each image is resolved once"
    # Outside its images: block the kustomization is line for line what it was.
    before = KUSTOMIZATION.read_text().splitlines()
    after = files.kustomization.read_text().splitlines()
    (start, end), (new_start, new_end) = map(pin_images._images_block, (before, after))
    assert before[:start] + before[end:] == after[:new_start] + after[new_end:]
    assert pin_images.unpinned(copies()) == []
    manifests = files.kustomization.parent.parent
    for overlay in ("dev", "gpu"):
        found = rendered_images(kustomize(kubectl, manifests / "overlays" / overlay))
        assert found and all(PINNED.fullmatch(i) for i in found), found
        assert all(i.endswith("@" + fake_digest(i.split("@")[0])) for i in found), found
    for ref in pin_images.dockerfile_images(files.dockerfile.read_text()):
        assert ref.digest == fake_digest(ref.tagged)
    default = re.search(r'^DEFAULT_IMAGE = "([^"]+)"', files.pipeline.read_text(), re.MULTILINE)
    component = "ghcr.io/kdflow/kdflow:0.1.0"
    assert default and default[1] == f"{component}@{fake_digest(component)}"
    # Run again with the same answers: nothing to write.
    assert pin_images.pin(copies(), fake_digest) == {}


def test_pinning_one_image_with_a_given_digest_leaves_the_rest(
    pin_images: ModuleType, copies: Any
) -> None:
    digest = "sha256:" + "b" * 64
    name = pin_images.COMPONENT_IMAGE

    def refuse(ref: str) -> str:
        raise AssertionError(f"resolved {ref}")

    def digests(path: Path) -> dict[str, str | None]:
        return {e["name"]: e.get("digest") for e in pin_images.read_images(path.read_text())}

    files = copies()
    write(pin_images.pin(files, refuse, only=[name], given={name: digest}))
    before, after = digests(KUSTOMIZATION), digests(files.kustomization)
    assert after == {**before, name: digest}
    assert files.dockerfile.read_text() == DOCKERFILE.read_text()
    default = re.search(r'^DEFAULT_IMAGE = "([^"]+)"', files.pipeline.read_text(), re.MULTILINE)
    assert default and default[1].endswith(f"@{digest}")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"only": ["example.org/not-ours"]}, "not an image of kdflow's"),
        ({"given": {"postgres": "sha256:short"}}, "not a sha256:<64 hex> digest"),
    ],
)
def test_pinning_refuses_unknown_images_and_bad_digests(
    pin_images: ModuleType, copies: Any, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(LookupError, match=message):
        pin_images.pin(copies(), fake_digest, **kwargs)


@pytest.mark.parametrize("answer", ["", "latest", "sha256:" + "A" * 64, "md5:" + "a" * 32])
def test_a_resolver_answer_that_is_no_digest_is_never_written(
    pin_images: ModuleType, answer: str
) -> None:
    with pytest.raises(LookupError, match="not a sha256 digest"):
        pin_images.checked(lambda ref: answer)("postgres:17.6-bookworm")


class FakeResponse(io.BytesIO):
    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        super().__init__(body)
        self.headers = headers


def test_http_resolver_follows_the_bearer_challenge(pin_images: ModuleType) -> None:
    digest = "sha256:" + "c" * 64
    seen: list[Any] = []

    def urlopen(request: Any, timeout: float) -> FakeResponse:
        seen.append(request)
        if isinstance(request, str):  # the token endpoint
            assert request == (
                "https://auth.docker.io/token?service=registry.docker.io"
                "&scope=repository%3Alibrary%2Fpostgres%3Apull"
            )
            return FakeResponse(json.dumps({"token": "t0k"}).encode(), {})
        if "Authorization" not in request.headers:
            headers = Message()
            headers["WWW-Authenticate"] = (
                'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                'scope="repository:library/postgres:pull"'
            )
            raise urllib.error.HTTPError(request.full_url, 401, "Unauthorized", headers, None)
        assert request.headers["Authorization"] == "Bearer t0k"
        assert "application/vnd.oci.image.index.v1+json" in request.headers["Accept"]
        return FakeResponse(b"{}", {"Docker-Content-Digest": digest})

    assert pin_images._http("postgres:17.6-bookworm", urlopen) == digest
    assert (
        seen[0].full_url
        == "https://registry-1.docker.io/v2/library/postgres/manifests/17.6-bookworm"
    )


# --- the hashed locks --------------------------------------------------------------------------


def logical_lines(path: Path) -> list[str]:
    """A requirements file's logical lines: continuations joined, comments dropped."""
    joined, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        if pending or line:
            joined.append((pending + line).strip())
        pending = ""
    return [line for line in joined if line]


@pytest.mark.parametrize("lock", [IMAGE_LOCK, BUILD_LOCK], ids=lambda p: p.name)
def test_every_lock_line_is_one_exact_pin_with_its_hashes(lock: Path) -> None:
    lines = logical_lines(lock)
    assert lines
    for line in lines:
        requirement, *options = line.split()
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[^=;\s]+", requirement), line
        assert options and all(re.fullmatch(f"--hash=sha256:{HEX64}", o) for o in options), line


def test_image_lock_is_requirements_lock_for_the_image(lock_image: ModuleType) -> None:
    image, dev = read_hashed_lock(IMAGE_LOCK), read_lock()
    assert {n: v for n, v in image.items() if n in dev and dev[n] != v} == {}
    # Only the build backend is not in the dev lock (pip freeze leaves setuptools out).
    build = {
        canonicalize_name(re.split(r"[=<>!~ ]", r)[0]) for r in lock_image.build_requirements()
    }
    assert set(image) - set(dev) <= build


def test_image_lock_leaves_torch_and_only_its_cuda_stack_to_the_base() -> None:
    text = IMAGE_LOCK.read_text()
    _, marker, trailer = text.partition("# The following packages were excluded from the output:")
    assert marker, "no `--no-emit-package` list: the lock would install PyPI's torch"
    excluded = {canonicalize_name(line.lstrip("# ").strip()) for line in trailer.splitlines()}
    excluded.discard("")
    assert "torch" in excluded and "torch" not in read_hashed_lock(IMAGE_LOCK)
    # Everything else left out is what PyPI's torch build pulls in and the CPU one does not.
    assert not excluded - {"torch"} & set(read_lock()), excluded & set(read_lock())
    assert all(re.match(r"(nvidia-|cuda-|triton$)", n) for n in excluded - {"torch"}), excluded


def test_build_lock_is_the_build_backend_at_the_image_locks_version(lock_image) -> None:
    build, image = read_hashed_lock(BUILD_LOCK), read_hashed_lock(IMAGE_LOCK)
    names = {
        canonicalize_name(re.split(r"[=<>!~ ]", r)[0]) for r in lock_image.build_requirements()
    }
    assert set(build) == names and {n: image[n] for n in names} == build


def test_lock_tool_finds_what_only_torch_needs(lock_image: ModuleType) -> None:
    first_pass = """\
filelock==3.0                 # via torch, transformers
kdflow-dep==1.0               # via kdflow (pyproject.toml)
nvidia-a==1.0                 # via torch
nvidia-b==1.0                 # via nvidia-a, cuda-toolkit
cuda-toolkit==1.0             # via torch
sympy==1.0                    # via torch
torch==2.13.0                 # via kdflow (pyproject.toml), -c requirements.lock
transformers==5.0             # via kdflow (pyproject.toml)
"""
    parents = lock_image.read_parents(first_pass)
    assert parents["nvidia-b"] == {"nvidia-a", "cuda-toolkit"}
    assert parents["torch"] == {"kdflow (pyproject.toml)", "-c requirements.lock"}
    dev = {"filelock", "sympy", "torch", "transformers", "kdflow-dep"}
    assert lock_image.provided_by_base(parents, dev) == {
        "torch",
        "nvidia-a",
        "nvidia-b",
        "cuda-toolkit",
    }
    hashed = (
        "x==1 \\\n    --hash=sha256:"
        + "0" * 64
        + "\n    # via -c /tmp/a.txt, -c requirements.lock, y\n"
    )
    assert lock_image._drop_constraint_annotations(hashed).endswith("    # via y\n")
    assert lock_image.read_pins(hashed) == {"x": "1"}


# --- the Dockerfile installs nothing unverified ------------------------------------------------


def test_every_pip_install_is_hash_checked_or_offline() -> None:
    installs = pip_installs(parse_dockerfile(DOCKERFILE))
    assert installs
    for pip_args in installs:
        assert not {"--index-url", "--extra-index-url", "-i", "--find-links", "-f",
                    "--trusted-host"} & set(pip_args), pip_args  # fmt: skip
        assert "--no-deps" in pip_args, f"pip would resolve, and fetch unlocked: {pip_args}"
        if requirement_files(pip_args):
            assert "--require-hashes" in pip_args, pip_args
        else:
            assert "--no-index" in pip_args, f"neither hashed nor offline: {pip_args}"
        # An isolated build fetches its backend unhashed: only the backend's own install may.
        assert "--no-build-isolation" in pip_args or requirement_files(pip_args) == [
            "requirements-build.lock"
        ], pip_args


def test_pip_check_runs_after_the_last_install() -> None:
    runs = " && ".join(a for k, a in parse_dockerfile(DOCKERFILE) if k == "RUN")
    assert runs.rfind("pip check") > runs.rfind("pip install")
