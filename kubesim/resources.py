"""The resource types kubesim serves: what the discovery endpoints list and what the store keeps apart.

A type is identified by (group, version, plural); core types have group "". Custom resources can be
added at run time by applying a CustomResourceDefinition (every served version becomes a type).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
INFERENCE_GROUP = "inference.networking.k8s.io"
INFERENCE_X_GROUP = "inference.networking.x-k8s.io"


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    #: has a /status subresource (status is written only through it; spec changes bump generation)
    status: bool = True
    short_names: tuple[str, ...] = ()
    #: seconds a DELETE leaves the object terminating (deletionTimestamp set) when the request gives none
    default_grace_seconds: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, self.version, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    def api_resources(self) -> list[dict[str, Any]]:
        """This type's entries of an APIResourceList (the resource and its status subresource)."""
        main: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(ALL_VERBS),
        }
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        entries = [main]
        if self.status:
            entries.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        return entries


def _t(group: str, version: str, plural: str, kind: str, **extra: Any) -> ResourceType:
    return ResourceType(group, version, plural, kind, **extra)


CORE_TYPES: tuple[ResourceType, ...] = (
    _t("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",)),
    _t("", "v1", "pods", "Pod", short_names=("po",), default_grace_seconds=30),
    _t("", "v1", "services", "Service", short_names=("svc",)),
    _t("", "v1", "configmaps", "ConfigMap", status=False, short_names=("cm",)),
    _t("", "v1", "secrets", "Secret", status=False),
    _t("", "v1", "serviceaccounts", "ServiceAccount", status=False, short_names=("sa",)),
    _t("", "v1", "events", "Event", status=False, short_names=("ev",)),
    _t("apps", "v1", "deployments", "Deployment", short_names=("deploy",)),
    _t("coordination.k8s.io", "v1", "leases", "Lease", status=False),
    _t("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", short_names=("pdb",)),
    _t("events.k8s.io", "v1", "events", "Event", status=False, short_names=("ev",)),
    _t("rbac.authorization.k8s.io", "v1", "roles", "Role", status=False),
    _t("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", status=False),
    _t("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False, status=False),
    _t("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False, status=False),
    _t("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", namespaced=False),
    _t("gateway.networking.k8s.io", "v1", "gateways", "Gateway"),
    _t("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute"),
    _t("networking.istio.io", "v1", "destinationrules", "DestinationRule", short_names=("dr",)),
)

INFERENCE_TYPES: tuple[ResourceType, ...] = (
    _t(INFERENCE_GROUP, "v1", "inferencepools", "InferencePool", short_names=("infpool",)),
    _t(INFERENCE_X_GROUP, "v1alpha2", "inferencepools", "InferencePool"),
    _t(INFERENCE_X_GROUP, "v1alpha2", "inferencemodels", "InferenceModel"),
    _t(INFERENCE_X_GROUP, "v1alpha2", "inferenceobjectives", "InferenceObjective"),
    _t(INFERENCE_X_GROUP, "v1alpha2", "inferencemodelrewrites", "InferenceModelRewrite"),
)


def types_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """The resource types a CustomResourceDefinition (apiextensions.k8s.io/v1) declares, one per served version."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not (isinstance(group, str) and isinstance(plural, str) and isinstance(kind, str)):
        raise ValueError("CustomResourceDefinition needs spec.group, spec.names.plural and spec.names.kind")
    scope = spec.get("scope", "Namespaced")
    if scope not in ("Namespaced", "Cluster"):
        raise ValueError(
            f"CustomResourceDefinition {plural}.{group}: spec.scope {scope!r} is not Namespaced or Cluster"
        )
    types = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or {}
        types.append(
            ResourceType(
                group,
                str(version["name"]),
                plural,
                kind,
                namespaced=scope == "Namespaced",
                status="status" in subresources,
                short_names=tuple(names.get("shortNames") or ()),
            )
        )
    if not types:
        raise ValueError(f"CustomResourceDefinition {plural}.{group} serves no version")
    return types
