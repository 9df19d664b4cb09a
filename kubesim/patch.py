"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch.

Strategic merge is the Kubernetes flavour of merge patch in which some lists of objects are merged by
a key (containers by name, conditions by type, ...) instead of replaced; `$patch: delete` in a list
item removes the item with that key, and `$patch: replace` on a map replaces it whole.
"""

from __future__ import annotations

import copy
from typing import Any

#: list field name → merge key, for the lists strategic merge patches merge instead of replacing
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "conditions": "type",
    "containerStatuses": "name",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}


class PatchError(ValueError):
    pass


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(result.get(key), list):
            result[key] = _merge_list(result[key], value, MERGE_KEYS[key])
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _merge_list(current: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    merged = [copy.deepcopy(item) for item in current]
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise PatchError(f"strategic merge patch: list item {item!r} lacks its merge key {merge_key!r}")
        index = next(
            (i for i, old in enumerate(merged) if isinstance(old, dict) and old.get(merge_key) == item[merge_key]),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append({k: copy.deepcopy(v) for k, v in item.items() if k != "$patch"})
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    return merged


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(document: Any, parts: list[str], path: str) -> Any:
    node = document
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise PatchError(f"JSON patch path {path!r} does not exist")
    return node


def _get(document: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return document
    parent = _parent(document, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise PatchError(f"JSON patch path {path!r} does not exist")


def _remove(document: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        raise PatchError("JSON patch cannot remove the whole document")
    parent, last = _parent(document, parts, path), parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise PatchError(f"JSON patch path {path!r} does not exist")


def _add(document: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent, last = _parent(document, parts, path), parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise PatchError(f"JSON patch index in {path!r} is out of range")
    else:
        raise PatchError(f"JSON patch path {path!r} does not name a member of an object or array")
    return document


def json_patch(target: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise PatchError("a JSON patch is a list of operations")
    document = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise PatchError(f"JSON patch operation {operation!r} needs 'op' and 'path'")
        op, path = operation["op"], operation["path"]
        if op == "add":
            document = _add(document, path, copy.deepcopy(operation.get("value")))
        elif op == "remove":
            _remove(document, path)
        elif op == "replace":
            _get(document, path)
            if _pointer(path):
                _remove(document, path)
            document = _add(document, path, copy.deepcopy(operation.get("value")))
        elif op in ("move", "copy"):
            source = operation.get("from", "")
            value = _remove(document, source) if op == "move" else copy.deepcopy(_get(document, source))
            document = _add(document, path, value)
        elif op == "test":
            if _get(document, path) != operation.get("value"):
                raise PatchError(f"JSON patch test failed at {path!r}")
        else:
            raise PatchError(f"unknown JSON patch operation {op!r}")
    return document


def apply_patch(content_type: str, target: dict[str, Any], patch: Any) -> Any:
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/merge-patch+json":
        return merge_patch(target, patch)
    if kind == "application/strategic-merge-patch+json":
        return strategic_merge_patch(target, patch)
    if kind == "application/json-patch+json":
        return json_patch(target, patch)
    raise PatchError(
        f"unsupported patch content type {content_type!r}; kubesim accepts application/merge-patch+json, "
        "application/strategic-merge-patch+json and application/json-patch+json"
    )
