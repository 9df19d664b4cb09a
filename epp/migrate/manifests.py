"""Kubernetes manifests from files, directories or standard input, each object with where it came from.

Multi-document YAML is read document by document; a `kind: List` (what `kubectl get -o yaml` prints) is
expanded into its items. Mappings without `kind` (values files, configuration) are skipped. Malformed YAML is
an error naming the file, the document and the line, and so is a list or scalar document in a file given by
name (in a directory walk it is skipped: kustomize patches live next to manifests).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

YAML_SUFFIXES = (".yaml", ".yml")
STDIN = "-"


class ManifestError(ValueError):
    """Input that cannot be read as manifests; `errors` holds one line per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)


@dataclass(frozen=True)
class Source:
    file: str
    #: 1-based position of the YAML document in the file
    document: int
    #: 1-based line where the document (or the List item) starts
    line: int
    #: 0-based index in a List's items, when the object came from one
    item: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}: document {self.document} (line {self.line})"
        return where if self.item is None else f"{where}, items[{self.item}]"

    @property
    def location(self) -> str:
        """`file:line`, the form editors and terminals link to."""
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Manifest:
    source: Source
    obj: dict[str, Any]

    @property
    def api_version(self) -> str:
        return str(self.obj.get("apiVersion", ""))

    @property
    def group(self) -> str:
        """API group ("" for the core group)."""
        return self.api_version.rpartition("/")[0]

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", ""))

    @property
    def metadata(self) -> dict[str, Any]:
        metadata = self.obj.get("metadata")
        return metadata if isinstance(metadata, dict) else {}

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str | None:
        namespace = self.metadata.get("namespace")
        return None if namespace is None else str(namespace)

    @property
    def display_name(self) -> str:
        """`namespace/name`, or `name` when the object has no namespace."""
        name = self.name or "(no name)"
        return f"{self.namespace}/{name}" if self.namespace else name


def load_text(text: str, file: str, *, strict: bool = True) -> list[Manifest]:
    """Every Kubernetes object in one YAML text (`file` names it in errors).

    With `strict`, a document that is a list or a scalar is an error; without it (files found by walking a
    directory, where kustomize patches and other YAML live next to manifests) it is skipped.
    """
    manifests: list[Manifest] = []
    errors: list[str] = []
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # the reader refuses unprintable characters before any document
        raise ManifestError([_yaml_error(file, 1, exc)]) from None
    document = 0
    try:
        while True:
            current = document + 1
            try:
                if not loader.check_node():
                    break
                node = loader.get_node()
                document = current
                line = node.start_mark.line + 1 if node is not None else 1
                data = loader.construct_document(node) if node is not None else None
            except yaml.YAMLError as exc:
                errors.append(_yaml_error(file, current, exc))
                break
            except RecursionError:  # PyYAML's composer recurses once per nesting level
                errors.append(f"{file}: document {current}: invalid YAML: nested too deeply")
                break
            _collect(data, Source(file, document, line), node, manifests, errors, strict)
    finally:
        loader.dispose()
    if errors:
        raise ManifestError(errors)
    return manifests


def _collect(data: Any, source: Source, node: Any, manifests: list[Manifest], errors: list[str], strict: bool) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        if not strict:
            return
        errors.append(
            f"{source}: expected a Kubernetes object (a mapping with apiVersion and kind), got a {_type_name(data)}"
        )
        return
    if "kind" not in data:
        return  # not a Kubernetes object (values file, configuration, ...)
    items = data.get("items")
    if str(data["kind"]).endswith("List") and isinstance(items, list):
        item_lines = _item_lines(node)
        for index, item in enumerate(items):
            line = item_lines[index] if index < len(item_lines) else source.line
            item_source = Source(source.file, source.document, line, index)
            if not isinstance(item, dict) or "kind" not in item:
                errors.append(f"{item_source}: expected a Kubernetes object in the List, got {item!r:.60}")
                continue
            manifests.append(Manifest(item_source, item))
        return
    manifests.append(Manifest(source, data))


def _item_lines(node: Any) -> list[int]:
    """Start line of each entry of a mapping node's `items` sequence."""
    if not isinstance(node, yaml.MappingNode):
        return []
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "items" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _yaml_error(file: str, document: int, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
    detail = f"{context}: {problem}" if context else problem
    return f"{file}: document {document}: invalid YAML at {where}: {detail}"


def _type_name(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return f"string ({value[:40]!r})"
    return type(value).__name__


def yaml_files(directory: Path) -> list[Path]:
    """The .yaml/.yml files under `directory`, recursively, in a stable order; hidden directories skipped."""
    found = [
        path
        for path in directory.rglob("*")
        if path.suffix in YAML_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(directory).parts)
    ]
    return sorted(found)


def load_paths(paths: Iterable[str], stdin: TextIO | None = None) -> list[Manifest]:
    """Every Kubernetes object in the given files, directories (recursively) and `-` (standard input).

    All problems in all inputs are collected before raising one ManifestError.
    """
    manifests: list[Manifest] = []
    errors: list[str] = []
    for given in paths:
        if given == STDIN:
            stream = stdin if stdin is not None else sys.stdin
            _load_one(stream.read(), "<stdin>", manifests, errors)
            continue
        path = Path(given)
        if path.is_dir():
            files = yaml_files(path)
            if not files:
                errors.append(f"{given}: no .yaml or .yml files in this directory")
            for file in files:
                _read_file(file, manifests, errors, strict=False)
        elif path.exists():
            _read_file(path, manifests, errors, strict=True)
        else:
            errors.append(f"{given}: no such file or directory")
    if errors:
        raise ManifestError(errors)
    return manifests


def _read_file(path: Path, manifests: list[Manifest], errors: list[str], *, strict: bool) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        errors.append(f"{path}: cannot read: {exc}")
        return
    _load_one(text, str(path), manifests, errors, strict=strict)


def _load_one(text: str, file: str, manifests: list[Manifest], errors: list[str], *, strict: bool = True) -> None:
    try:
        manifests.extend(load_text(text, file, strict=strict))
    except ManifestError as exc:
        errors.extend(exc.errors)
