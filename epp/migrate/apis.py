"""The API groups, kinds and references of a migration, and the small helpers every converter step uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epp.migrate.manifests import Manifest

V1_GROUP = "inference.networking.k8s.io"
ALPHA_GROUP = "inference.networking.x-k8s.io"
V1_POOL_API = f"{V1_GROUP}/v1"
ALPHA_OBJECTS_API = f"{ALPHA_GROUP}/v1alpha2"
GATEWAY_GROUP = "gateway.networking.k8s.io"
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")

#: HTTPRoute backendRef weight when unset (Gateway API)
DEFAULT_BACKEND_WEIGHT = 1
#: Gateway API maximum backendRef weight
MAX_BACKEND_WEIGHT = 1_000_000
_DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def is_alpha_pool_ref(ref: Mapping[str, Any], default_group: str) -> bool:
    """Whether a reference {group, kind, name} names a v1alpha2 InferencePool."""
    return bool(ref.get("group", default_group) == ALPHA_GROUP and ref.get("kind", "InferencePool") == "InferencePool")


def is_alpha_backend_ref(ref: Any) -> bool:
    """An HTTPRoute/GRPCRoute backendRef to a v1alpha2 InferencePool (backendRef group defaults to core)."""
    return isinstance(ref, Mapping) and ref.get("group") == ALPHA_GROUP and ref.get("kind") == "InferencePool"


def object_metadata(manifest: Manifest, name: str) -> dict[str, Any]:
    """name, namespace, labels and annotations of the source object (server-set fields dropped)."""
    source = manifest.metadata
    metadata: dict[str, Any] = {"name": name}
    if source.get("namespace"):
        metadata["namespace"] = source["namespace"]
    if isinstance(source.get("labels"), dict) and source["labels"]:
        metadata["labels"] = dict(source["labels"])
    annotations = source.get("annotations")
    if isinstance(annotations, dict):
        kept = {k: v for k, v in annotations.items() if k not in _DROPPED_ANNOTATIONS}
        if kept:
            metadata["annotations"] = kept
    return metadata


def listed(value: Any) -> list[Any]:
    """A manifest field meant to be a list, as one (a missing or mistyped field lists nothing)."""
    return value if isinstance(value, list) else []


def is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def show(value: Any) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
