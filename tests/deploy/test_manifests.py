"""Every Kubernetes manifest file in deploy/ validates as written (without kustomize), and every kustomization
refers only to files that exist in deploy/ and leaves none of its directory's files unused.

That second check is what still guards the overlays on a machine without a kustomize renderer
(tests/deploy/render.py); with one, test_kustomize.py renders them all.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from epp.config.schema import ConfigError, load_config_text
from tests.deploy.render import KUSTOMIZATION, KUSTOMIZE_DIR, kustomizations, referenced_files
from tests.deploy.validation import (
    CRDS,
    DEPLOY,
    EPP_CONFIG_KIND,
    KUSTOMIZE_GROUP,
    REPO,
    Doc,
    group_of,
    load_docs,
    object_errors,
)

#: Files that document placeholders for the user to fill in, with sample values to validate them with.
PLACEHOLDERS: dict[str, dict[str, str]] = {
    "deploy/observability/hpa.yaml": {
        "INFERENCE_POOL_NAMESPACE": "inference-model-server",
        "INFERENCE_POOL_NAME": "inference-model-server-pool",
        "CLUSTER_NAME": "cluster-1",
        "MIN_REPLICAS": "1",
        "MAX_REPLICAS": "10",
        "TARGET_VALUE": '"0.7"',
    },
}
#: directories written as Kubernetes manifests only: every YAML mapping there must be an object
MANIFEST_DIRS = (KUSTOMIZE_DIR, CRDS)
#: Helm charts: their templates are Go templates, not YAML; test_helm.py validates what they render
HELM_DIR = DEPLOY / "helm"


def _with_placeholders(path: Path) -> str:
    text = path.read_text()
    for name, value in sorted(PLACEHOLDERS.get(str(path.relative_to(REPO)), {}).items(), key=lambda kv: -len(kv[0])):
        text = re.sub(rf"\b{name}\b", value, text)
    return text


def manifest_docs() -> list[Doc]:
    docs: list[Doc] = []
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        if HELM_DIR in path.parents and path.parent.name == "templates":
            continue
        docs += [d for d in load_docs(path, _with_placeholders(path)) if "kind" in d.obj]
    return docs


def _is_cluster_object(doc: Doc) -> bool:
    return group_of(doc.obj) != KUSTOMIZE_GROUP and doc.obj["kind"] != EPP_CONFIG_KIND


@pytest.mark.parametrize("doc", [d for d in manifest_docs() if _is_cluster_object(d)], ids=lambda d: d.where)
def test_manifest_validates(doc: Doc) -> None:
    errors = object_errors(doc.obj)
    assert not errors, f"{doc.where}:\n" + "\n".join(errors)


def test_manifests_exist_in_every_part_of_deploy() -> None:
    where = {d.path.relative_to(DEPLOY).parts[0] for d in manifest_docs() if _is_cluster_object(d)}
    assert {"kubernetes", "crds", "observability"} <= where


@pytest.mark.parametrize("doc", [d for d in manifest_docs() if d.obj["kind"] == EPP_CONFIG_KIND], ids=lambda d: d.where)
def test_endpoint_picker_configs_load(doc: Doc) -> None:
    try:
        load_config_text(doc.path.read_text(), str(doc.path))
    except ConfigError as exc:
        pytest.fail("\n".join(exc.errors))


def test_manifest_dirs_hold_only_objects_and_referenced_patches() -> None:
    patches = {p for k in kustomizations() for p in referenced_files(k)[0]}
    for directory in MANIFEST_DIRS:
        for path in sorted(directory.rglob("*.y*ml")):
            for doc in load_docs(path):
                assert {"apiVersion", "kind"} <= doc.obj.keys(), f"{doc.where}: not a Kubernetes object"
            if not load_docs(path):
                assert path.resolve() in patches, f"{path.relative_to(REPO)}: neither objects nor a referenced patch"


@pytest.mark.parametrize("directory", kustomizations(), ids=lambda p: str(p.relative_to(REPO)))
def test_kustomization_references_exist(directory: Path) -> None:
    _, problems = referenced_files(directory)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("directory", kustomizations(), ids=lambda p: str(p.relative_to(REPO)))
def test_kustomization_uses_every_file_beside_it(directory: Path) -> None:
    used = set(referenced_files(directory)[0])
    beside = {p.resolve() for p in directory.glob("*.y*ml") if p.name != KUSTOMIZATION}
    assert not beside - used, f"{directory.relative_to(REPO)}: not referenced: {sorted(p.name for p in beside - used)}"


def test_overlays_build_on_the_base() -> None:
    base = (KUSTOMIZE_DIR / "base").resolve()
    overlays = [k for k in kustomizations() if k.parent.name == "overlays"]
    assert {k.name for k in overlays} == {"istio", "gke", "ha", "active-active"}
    for overlay in overlays:
        assert base in referenced_files(overlay)[0], f"{overlay.name} does not build on base"
