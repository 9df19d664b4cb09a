"""The Dockerfile's structure (no Docker daemon or hadolint here, so the image is not built in the tests):
multi-stage wheel build → slim runtime, non-root, `epp` as entry point, the EPP's ports exposed, and a
.dockerignore that keeps the context small without dropping what the build copies."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

import pytest

from tests.deploy.validation import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    line: int
    op: str
    args: str


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction]

    def ops(self, op: str) -> list[Instruction]:
        return [i for i in self.instructions if i.op == op]


def instructions() -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    result: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(DOCKERFILE.read_text().splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        op, _, args = text.partition(" ")
        result.append(Instruction(start, op.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return result


def stages() -> tuple[dict[str, str], list[Stage]]:
    args: dict[str, str] = {}
    found: list[Stage] = []
    for instruction in instructions():
        if instruction.op == "ARG" and not found:
            name, _, default = instruction.args.partition("=")
            args[name] = default
        elif instruction.op == "FROM":
            words = instruction.args.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(image, name, []))
        else:
            assert found, f"line {instruction.line}: {instruction.op} before the first FROM"
            found[-1].instructions.append(instruction)
    return args, found


def test_two_stages_build_then_slim_runtime() -> None:
    _, found = stages()
    assert [s.name for s in found] == ["build", "runtime"]
    for stage in found:
        repository, _, tag = stage.image.partition(":")
        assert tag and tag != "latest", f"{stage.image}: pin the base image"
        assert repository == "python"
    assert "slim" in found[-1].image
    build = " ".join(i.args for i in found[0].ops("RUN"))
    assert "pip wheel" in build and "--no-deps" in build, "the build stage builds epp's wheel"
    assert re.search(r"pip install [^&]*\.whl", build), "and installs that wheel"


def test_runtime_copies_only_the_built_environment() -> None:
    _, found = stages()
    runtime = found[-1]
    copies = runtime.ops("COPY") + runtime.ops("ADD")
    assert copies and all("--from=build" in c.args for c in copies), "the runtime takes nothing from the context"
    assert not runtime.ops("RUN"), "nothing is installed or compiled in the runtime stage"
    env = " ".join(i.args for i in runtime.ops("ENV"))
    target = copies[0].args.split()[-1]
    assert f"PATH={target}/bin:" in env, "epp from the copied environment is on PATH"


def test_runs_as_a_non_root_user() -> None:
    _, found = stages()
    users = found[-1].ops("USER")
    assert users, "the runtime stage sets USER"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0") and (not user.isdigit() or int(user) >= 1000)
    deployment = (REPO / "deploy/kubernetes/base/deployment.yaml").read_text()
    assert f"runAsUser: {user}" in deployment, "the Deployment runs as the image's user"


def test_entrypoint_is_epp_and_the_ports_are_exposed() -> None:
    _, found = stages()
    runtime = found[-1]
    entrypoint = runtime.ops("ENTRYPOINT")
    assert len(entrypoint) == 1
    assert json.loads(entrypoint[0].args) == ["epp"], "exec form, so SIGTERM reaches epp (graceful drain)"
    assert not runtime.ops("CMD"), "flags come from the Deployment's args"
    exposed = {int(p.split("/")[0]) for i in runtime.ops("EXPOSE") for p in i.args.split()}
    assert exposed == {9002, 9003, 9090}


def _glob(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `*` and `?` within one path element, `**` across elements."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] in "*?":
            out, i = out + ("[^/]*" if pattern[i] == "*" else "[^/]"), i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _ignored(relative: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `relative` out of the context: the last pattern matching it or one of its parent
    directories decides (`!` re-includes)."""
    parts = relative.split("/")
    paths = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        regex = _glob(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(path) for path in paths):
            ignored = not pattern.startswith("!")
    return ignored


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest() -> None:
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    _, found = stages()
    copied = [
        word
        for stage in found
        for c in stage.ops("COPY")
        if "--from=" not in c.args
        for word in shlex.split(c.args)[:-1]
    ]
    assert {"pyproject.toml", "README.md", "epp", "plugins", "epp_pb"} <= set(copied)
    assert not {"vllmsim", "kubesim"} & set(copied), "simulators and the test API server stay out of the image"
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not _ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    for heavy in (".git", "tests", "benchmarks", "epp/__pycache__/cli.cpython-311.pyc", "epp.egg-info"):
        assert _ignored(heavy, patterns), f"{heavy} should not be sent to the build"


@pytest.mark.parametrize("package", ["epp", "epp_pb"])
def test_copied_packages_are_the_wheels_packages(package: str) -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"{package}*"' in pyproject, f"{package} is copied but not packaged"


def test_plugins_folder_installs_as_epp_plugins() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"epp.plugins" = "plugins"' in pyproject
    assert '"plugins*"' not in pyproject, "no top-level plugins package in the wheel"
