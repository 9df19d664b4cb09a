"""`epp migrate --check`: what in a set of manifests still uses the v1alpha2 (preview) inference API."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from epp.migrate.apis import (
    ALPHA_GROUP,
    GATEWAY_GROUP,
    ROUTE_KINDS,
    V1_GROUP,
    is_alpha_backend_ref,
    is_alpha_pool_ref,
    listed,
)
from epp.migrate.manifests import Manifest

_ALPHA_CRDS = {
    f"inferencepools.{ALPHA_GROUP}": "v1alpha2 InferencePool",
    f"inferencemodels.{ALPHA_GROUP}": "InferenceModel",
}
_WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Pod")
#: flags of EPP releases up to v0.5, which only knew the v1alpha2 pool
_CAMEL_CASE_POOL_FLAGS = ("-poolName", "--poolName")


@dataclass(frozen=True)
class Finding:
    manifest: Manifest
    what: str

    def __str__(self) -> str:
        return f"{self.manifest.source.location}: {self.manifest.kind} {self.manifest.display_name}: {self.what}"


def find_v1alpha2(manifests: Iterable[Manifest]) -> list[Finding]:
    """Every use of the v1alpha2 API: its objects, references to its pools, EPPs watching them, its CRDs."""
    findings: list[Finding] = []
    for manifest in manifests:
        findings.extend(Finding(manifest, what) for what in _uses(manifest))
    return findings


def _uses(manifest: Manifest) -> list[str]:
    kind, group, spec = manifest.kind, manifest.group, manifest.obj.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    if group == ALPHA_GROUP and kind == "InferencePool":
        return [f"{manifest.api_version} InferencePool; convert it to {V1_GROUP}/v1"]
    if group == ALPHA_GROUP and kind == "InferenceModel":
        return ["InferenceModel; replaced by InferenceObjective (priority) and InferenceModelRewrite (targetModels)"]
    if group == ALPHA_GROUP and kind in ("InferenceObjective", "InferenceModelRewrite"):
        ref = spec.get("poolRef")
        if isinstance(ref, dict) and is_alpha_pool_ref(ref, V1_GROUP):
            return [f"spec.poolRef names the v1alpha2 InferencePool {ref.get('name')!r}"]
        return []
    if group == GATEWAY_GROUP and kind in ROUTE_KINDS:
        return _route_uses(spec)
    if kind == "CustomResourceDefinition" and manifest.name in _ALPHA_CRDS:
        return [f"CRD of the {_ALPHA_CRDS[manifest.name]} API; delete it once nothing uses it"]
    if kind in _WORKLOAD_KINDS:
        return _epp_uses(manifest.obj)
    return []


def _route_uses(spec: dict[str, Any]) -> list[str]:
    uses: list[str] = []
    for rule_index, rule in enumerate(listed(spec.get("rules"))):
        if not isinstance(rule, dict):
            continue
        for ref_index, ref in enumerate(listed(rule.get("backendRefs"))):
            if is_alpha_backend_ref(ref):
                uses.append(
                    f"spec.rules[{rule_index}].backendRefs[{ref_index}] routes to the v1alpha2 InferencePool "
                    f"{ref.get('name')!r}"
                )
    return uses


def _epp_uses(obj: dict[str, Any]) -> list[str]:
    """Containers started with --pool-group inference.networking.x-k8s.io or the pre-v1 camelCase flags."""
    uses: list[str] = []
    for container in _containers(obj):
        args = [str(a) for a in listed(container.get("command")) + listed(container.get("args"))]
        name = container.get("name", "?")
        for index, arg in enumerate(args):
            value = None
            if arg.startswith("--pool-group="):
                value = arg.partition("=")[2]
            elif arg == "--pool-group" and index + 1 < len(args):
                value = args[index + 1]
            if value == ALPHA_GROUP:
                uses.append(f"container {name!r} runs an EPP with --pool-group {ALPHA_GROUP} (a v1alpha2 pool)")
            if arg.split("=")[0] in _CAMEL_CASE_POOL_FLAGS:
                uses.append(
                    f"container {name!r} passes {arg.split('=')[0]}: an EPP release before v1.0, which only "
                    "serves v1alpha2 pools"
                )
    return uses


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return []
    if obj.get("kind") != "Pod":
        template = spec.get("template")
        spec = template.get("spec") if isinstance(template, dict) else None
        if not isinstance(spec, dict):
            return []
    containers = listed(spec.get("containers")) + listed(spec.get("initContainers"))
    return [c for c in containers if isinstance(c, dict)]
