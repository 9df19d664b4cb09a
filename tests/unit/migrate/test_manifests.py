"""Reading manifests: multi-document files, directories, stdin, kubectl Lists, and errors that name the spot."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from epp.migrate.check import find_v1alpha2
from epp.migrate.manifests import ManifestError, load_paths, load_text

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "migrate"


def test_documents_keep_their_position() -> None:
    text = "# comment\napiVersion: v1\nkind: A\n---\n---\nnot: a k8s object\n---\napiVersion: v1\nkind: B\n"
    manifests = load_text(text, "f.yaml")
    assert [(m.kind, m.source.document, m.source.line) for m in manifests] == [("A", 1, 2), ("B", 4, 8)]
    assert str(manifests[1].source) == "f.yaml: document 4 (line 8)"
    assert manifests[1].source.location == "f.yaml:8"


def test_list_items_are_expanded_with_their_lines() -> None:
    manifests = load_paths([str(FIXTURES / "canary" / "kubectl-get.yaml")])
    assert [(m.kind, m.name, m.namespace) for m in manifests] == [
        ("InferencePool", "mistral", "llm"),
        ("InferenceModel", "mistral-chat", "llm"),
    ]
    assert [m.source.item for m in manifests] == [0, 1]
    assert [m.source.line for m in manifests] == [8, 40]
    assert manifests[0].display_name == "llm/mistral"
    assert manifests[0].group == "inference.networking.x-k8s.io"


def test_directories_are_walked_in_order_and_stdin_is_read() -> None:
    files = {m.source.file for m in load_paths([str(FIXTURES / "guide")])}
    assert [Path(f).name for f in sorted(files)] == sorted(p.name for p in (FIXTURES / "guide").glob("*.yaml"))
    from_stdin = load_paths(["-"], io.StringIO("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"))
    assert [(m.kind, m.source.file) for m in from_stdin] == [("ConfigMap", "<stdin>")]


def test_yaml_errors_name_file_document_line_and_column() -> None:
    with pytest.raises(ManifestError) as caught:
        load_paths([str(FIXTURES / "malformed" / "bad-yaml.yaml")])
    (error,) = caught.value.errors
    assert error.startswith(f"{FIXTURES / 'malformed' / 'bad-yaml.yaml'}: document 2: invalid YAML at line 16, column")


def test_a_named_file_must_hold_objects_but_a_walked_directory_may_hold_patches(tmp_path: Path) -> None:
    patch = FIXTURES / "malformed" / "not-an-object.yaml"
    with pytest.raises(ManifestError) as caught:
        load_paths([str(patch)])
    assert caught.value.errors == [
        f"{patch}: document 1 (line 2): expected a Kubernetes object (a mapping with apiVersion and kind), got a list"
    ]
    (tmp_path / "patch.yaml").write_text(patch.read_text())
    (tmp_path / "cm.yml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.yaml").write_text("{{{")
    assert [m.kind for m in load_paths([str(tmp_path)])] == ["ConfigMap"]


def test_every_missing_path_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as caught:
        load_paths([str(tmp_path / "nope.yaml"), str(tmp_path)])
    assert caught.value.errors == [
        f"{tmp_path / 'nope.yaml'}: no such file or directory",
        f"{tmp_path}: no .yaml or .yml files in this directory",
    ]


def test_a_scalar_document_is_an_error() -> None:
    with pytest.raises(ManifestError) as caught:
        load_text("apiVersion: v1\nkind: A\n---\njust text\n", "f.yaml")
    assert caught.value.errors == [
        "f.yaml: document 2 (line 4): expected a Kubernetes object (a mapping with apiVersion and kind), "
        "got a string ('just text')"
    ]


def test_mistyped_list_fields_are_read_as_listing_nothing() -> None:
    text = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: route, namespace: llm}
spec:
  rules:
  - backendRefs: 5
  - backendRefs: [{group: inference.networking.x-k8s.io, kind: InferencePool, name: old}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: epp, namespace: llm}
spec:
  template:
    spec:
      containers: [{name: epp, command: "epp --pool-group inference.networking.x-k8s.io", args: 7}]
      initContainers: 3
"""
    findings = find_v1alpha2(load_text(text, "m.yaml"))
    assert [f.what for f in findings] == ["spec.rules[1].backendRefs[0] routes to the v1alpha2 InferencePool 'old'"]
