"""infra/Dockerfile installs what pyproject.toml declares, at the versions requirements.lock
pins (through the hashed image lock), on a pinned CUDA base whose torch is the locked one, and
runs as a non-root user. tests/manifests/test_supply_chain.py checks the hashes and digests."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
from manifest_checks import image_is_pinned
from manifest_files import DOCKERFILE, REPO, read_lock
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

Instruction = tuple[str, str]  # (keyword, arguments)


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions in order, continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for keyword, args in instructions:
        if keyword == "ARG" and "=" in args:
            name, value = args.split("=", 1)
            defaults[name] = value.strip("\"'")
    return defaults


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def shell_commands(run: str) -> list[list[str]]:
    """The words of each command in a shell line, split at unquoted ``&&``, ``;``, ``||``, ``|``."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", ";", "||", "|", "&"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def pip_installs(instructions: list[Instruction]) -> list[list[str]]:
    """The arguments of every `pip install` in RUN instructions, ARGs expanded."""
    args = arg_defaults(instructions)
    found = []
    for keyword, run in instructions:
        if keyword != "RUN":
            continue
        for words in shell_commands(expand(run, args)):
            if "pip" in words and words[words.index("pip") + 1 : words.index("pip") + 2] == [
                "install"
            ]:
                found.append(words[words.index("pip") + 2 :])
    return found


def targets(pip_args: list[str]) -> list[str]:
    """What a pip install installs: its words that are not options or their values."""
    with_value = {"-c", "--constraint", "-r", "--requirement", "--index-url", "--extra-index-url"}
    result, skip = [], False
    for word in pip_args:
        if skip:
            skip = False
        elif word in with_value:
            skip = True
        elif not word.startswith("-"):
            result.append(word)
    return result


def requirement_files(pip_args: list[str]) -> list[str]:
    return [pip_args[i + 1] for i, w in enumerate(pip_args) if w in ("-r", "--requirement")]


IMAGE_LOCK = REPO / "infra" / "requirements-image.lock"
BUILD_LOCK = REPO / "infra" / "requirements-build.lock"


def read_hashed_lock(path: Path) -> dict[str, str]:
    """A hashed lock (``name==version \\`` then ``--hash`` lines) as {canonical name: version}."""
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if match:
            pins[canonicalize_name(match[1])] = match[2]
    return pins


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE)


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_base_image_is_pinned(dockerfile) -> None:
    bases = [args.split()[0] for keyword, args in dockerfile if keyword == "FROM"]
    assert bases and all(image_is_pinned(b) for b in bases), bases


def test_base_image_carries_the_locked_torch_and_cuda(dockerfile) -> None:
    (base,) = [args.split()[0] for keyword, args in dockerfile if keyword == "FROM"]
    match = re.fullmatch(
        r"pytorch/pytorch:(?P<torch>[\d.]+)-cuda(?P<cuda>[\d.]+)-cudnn\d+-\w+(@sha256:\S+)?", base
    )
    assert match, f"unexpected base {base}"
    args = arg_defaults(dockerfile)
    assert match["torch"] == args["TORCH_VERSION"] == read_lock()["torch"]
    assert args["TORCH_CUDA"] == "cu" + match["cuda"].replace(".", "")


def test_torch_comes_from_the_base_alone_and_is_checked_first(dockerfile) -> None:
    # PyPI does not serve the cu128 build, so no hash from PyPI could match it: the image never
    # installs torch, and fails the build if the (digest-pinned) base is not the locked torch.
    runs = [args for keyword, args in dockerfile if keyword == "RUN"]
    args = arg_defaults(dockerfile)
    want = f"('3.11', '{args['TORCH_VERSION']}+{args['TORCH_CUDA']}')"
    checks = [i for i, run in enumerate(runs) if "torch.__version__" in run]
    assert checks, "no RUN checks the base's torch"
    assert f"want = {want}" in expand(runs[checks[0]], args)
    assert "sys.exit(" in runs[checks[0]]
    first_install = min(i for i, run in enumerate(runs) if "pip install" in run)
    assert checks[0] < first_install, "the base's torch is checked before anything is installed"
    installed = [t for a in pip_installs(dockerfile) for t in targets(a)]
    assert not [t for t in installed if canonicalize_name(re.split(r"[=<>!~\[]", t)[0]) == "torch"]
    for lock in (IMAGE_LOCK, BUILD_LOCK):
        assert "torch" not in read_hashed_lock(lock), f"{lock.name} would replace the base's torch"


def test_project_is_installed_offline_after_the_hashed_locks(dockerfile) -> None:
    installs = pip_installs(dockerfile)
    locks = [requirement_files(a) for a in installs if requirement_files(a)]
    assert locks == [["requirements-build.lock"], ["requirements-image.lock"]], locks
    project = [a for a in installs if targets(a) == ["."]]
    assert project, "no `pip install .`: the image would not install kdflow from pyproject.toml"
    for pip_args in project:
        # Everything it needs is installed by then: it must fetch nothing and resolve nothing.
        assert {"--no-index", "--no-deps", "--no-build-isolation"} <= set(pip_args), pip_args
    assert installs.index(project[0]) == len(installs) - 1, "kdflow is installed last"
    # Nothing but the locks and the project: a hand-kept package list would drift from pyproject.
    others = [t for a in installs for t in targets(a) if t != "."]
    assert others == []
    copied = " ".join(args for keyword, args in dockerfile if keyword == "COPY")
    assert "pyproject.toml" in copied
    assert "infra/requirements-build.lock" in copied and "infra/requirements-image.lock" in copied


@pytest.mark.parametrize("lock_name", ["requirements.lock", "infra/requirements-image.lock"])
def test_every_declared_dependency_is_locked_within_its_range(pyproject, lock_name: str) -> None:
    image = lock_name != "requirements.lock"
    lock = read_hashed_lock(REPO / lock_name) if image else read_lock()
    problems = []
    for line in pyproject["project"]["dependencies"]:
        req = Requirement(line)
        if image and canonicalize_name(req.name) == "torch":
            continue  # the base image's (test_torch_comes_from_the_base_alone_and_is_checked_first)
        pinned = lock.get(canonicalize_name(req.name))
        if pinned is None:
            problems.append(f"{req.name} is not in {lock_name}")
        elif not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{req.name}=={pinned} is outside {req.specifier}")
    assert problems == []


def test_image_includes_kfp_for_install_kfp_package_false(pyproject) -> None:
    names = {canonicalize_name(Requirement(d).name) for d in pyproject["project"]["dependencies"]}
    assert {"kfp", "kfp-kubernetes"} <= names
    assert "kfp" in read_lock() and "kfp" in read_hashed_lock(IMAGE_LOCK)


def test_copied_sources_are_what_pyproject_packages(dockerfile, pyproject) -> None:
    copied = {
        src.rstrip("/")
        for keyword, args in dockerfile
        if keyword == "COPY" and not args.startswith("--from")
        for src in args.split()[:-1]
    }
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= copied, f"not copied: {sorted(packages - copied)}"
    assert pyproject["project"]["readme"] in copied, "setuptools reads the readme at build time"


def test_image_runs_as_a_numeric_non_root_user(dockerfile) -> None:
    users = [args for keyword, args in dockerfile if keyword == "USER"]
    assert users, "no USER: the image runs as root"
    uid, _, gid = expand(users[-1], arg_defaults(dockerfile)).partition(":")
    # numeric, so the kubelet can verify runAsNonRoot
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert not gid or gid.isdigit()


def test_kfp_artifact_dirs_belong_to_the_image_user(dockerfile) -> None:
    runs = " ".join(args for keyword, args in dockerfile if keyword == "RUN")
    chown = re.search(r"chown \S+ ((?:/\S+ ?)+)", runs)
    assert chown, "no chown of the KFP artifact directories"
    assert {"/gcs", "/minio", "/s3"} <= set(chown[1].split())


def test_build_context_leaves_out_the_venv_and_lets_in_what_is_copied(dockerfile) -> None:
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    rules = [r.strip() for r in ignore if r.strip() and not r.startswith("#")]
    assert rules[0] == "*" or ".venv" in rules, "the build context would include .venv"
    if rules[0] == "*":
        copied = {
            src.rstrip("/")
            for keyword, args in dockerfile
            if keyword == "COPY" and not args.startswith("--from")
            for src in args.split()[:-1]
        }
        assert {f"!{src}" for src in copied} <= set(rules), "a COPY source is filtered out"
