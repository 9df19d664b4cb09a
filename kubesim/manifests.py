"""YAML manifests → objects, and `apply` (create or replace, then status through the status subresource)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from kubesim.objects import ApiError, Object
from kubesim.store import Store


def load_manifests(text: str, source: str = "manifest") -> list[Object]:
    """Every object in a multi-document YAML text (`kind: List` documents are expanded)."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: invalid YAML: {exc}") from None
    objects: list[Object] = []
    for index, document in enumerate(documents):
        if document is None:
            continue
        if not isinstance(document, dict) or "apiVersion" not in document or "kind" not in document:
            raise ValueError(f"{source}: document {index + 1} is not a Kubernetes object (needs apiVersion and kind)")
        if str(document["kind"]).endswith("List") and isinstance(document.get("items"), list):
            objects.extend(document.get("items") or [])
        else:
            objects.append(document)
    return objects


def load_manifest_files(paths: list[str | Path]) -> list[Object]:
    objects: list[Object] = []
    for path in paths:
        objects.extend(load_manifests(Path(path).read_text(), str(path)))
    return objects


def apply(store: Store, obj: Object, namespace: str = "") -> Object:
    """Create the object, or replace it if it exists (as `kubectl apply` ends up doing); a `status` in
    the manifest is then written through the status subresource, as a controller or kubelet would."""
    rtype = store.type_of(str(obj["apiVersion"]), str(obj["kind"]))
    metadata: dict[str, Any] = obj.get("metadata") or {}
    name = metadata.get("name", "")
    ns = (namespace or metadata.get("namespace") or "default") if rtype.namespaced else ""
    status = obj.get("status")
    body = copy.deepcopy(obj)
    body.get("metadata", {}).pop("resourceVersion", None)
    try:
        store.get(rtype, ns, name)
    except ApiError as exc:
        if exc.code != 404:
            raise
        result = store.create(rtype, ns, body)
    else:
        result = store.update(rtype, ns, name, body)
    if status is not None and rtype.status:
        result = store.update(rtype, ns, result["metadata"]["name"], {**result, "status": status}, "status")
    return result


def apply_all(store: Store, objects: list[Object], namespace: str = "") -> list[Object]:
    """Apply in order, CustomResourceDefinitions and Namespaces first (so later objects can use them)."""
    first = [o for o in objects if o.get("kind") in ("CustomResourceDefinition", "Namespace")]
    rest = [o for o in objects if o.get("kind") not in ("CustomResourceDefinition", "Namespace")]
    return [apply(store, obj, namespace) for obj in first + rest]
