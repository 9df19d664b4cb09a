"""HTTPRoute / GRPCRoute backendRefs to a v1alpha2 pool → the two route steps of the zero-downtime path: step 2,
both pools side by side with a weight split, and step 3, 100 % to the v1 pool."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from epp.migrate.apis import (
    DEFAULT_BACKEND_WEIGHT,
    MAX_BACKEND_WEIGHT,
    V1_GROUP,
    is_alpha_backend_ref,
    listed,
    object_metadata,
    show,
)
from epp.migrate.manifests import Manifest

#: reports a problem: (manifest, field path, message)
ReportError = Callable[[Manifest, str, str], None]


def route_steps(
    manifest: Manifest, v1_share: int, v1_pool_name: Callable[[str], str], error: ReportError
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(split step, final step) of a route that sends traffic to a v1alpha2 pool; None when it sends none there,
    or when it has a problem (reported through `error`)."""
    spec = manifest.obj.get("spec")
    rules = spec.get("rules") if isinstance(spec, dict) else None
    if not isinstance(rules, list):
        return None
    if not any(
        isinstance(rule, dict) and any(is_alpha_backend_ref(ref) for ref in listed(rule.get("backendRefs")))
        for rule in rules
    ):
        return None
    split = _route_step(manifest, v1_share, v1_pool_name, error)
    if split is None:
        return None  # the problems are reported once, from the split step
    final = _route_step(manifest, 100, v1_pool_name, error)
    return None if final is None else (split, final)


def _route_step(
    manifest: Manifest, v1_share: int, v1_pool_name: Callable[[str], str], error: ReportError
) -> dict[str, Any] | None:
    route = {
        "apiVersion": manifest.api_version,
        "kind": manifest.kind,
        "metadata": object_metadata(manifest, manifest.name),
        "spec": copy.deepcopy(manifest.obj["spec"]),
    }
    for index, rule in enumerate(route["spec"]["rules"]):
        if not isinstance(rule, dict):
            continue
        refs = rule.get("backendRefs") or []
        if not isinstance(refs, list) or not any(is_alpha_backend_ref(ref) for ref in refs):
            continue
        new_refs = _split_refs(manifest, index, refs, v1_share, v1_pool_name, error)
        if new_refs is None:
            return None
        rule["backendRefs"] = new_refs
    return route


def _split_refs(
    manifest: Manifest,
    rule_index: int,
    refs: list[Any],
    v1_share: int,
    v1_pool_name: Callable[[str], str],
    error: ReportError,
) -> list[dict[str, Any]] | None:
    """One rule's backendRefs with every v1alpha2 pool split (or moved, `v1_share` 100) to its v1 pool.

    Weights are relative within a rule, so when the rule has other backends as well their weights are
    scaled by 100 with the pools' so that the pools' share of the rule stays what it was.
    """
    scale = 100
    result: list[dict[str, Any]] = []
    for ref_index, ref in enumerate(refs):
        path = f"spec.rules[{rule_index}].backendRefs[{ref_index}]"
        if not isinstance(ref, dict):
            error(manifest, path, f"expected a backendRef mapping, got {show(ref)}")
            return None
        weight = ref.get("weight", DEFAULT_BACKEND_WEIGHT)
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            error(manifest, f"{path}.weight", f"expected a weight 0..1000000, got {show(weight)}")
            return None
        if not is_alpha_backend_ref(ref):
            result.append({**ref, "weight": weight * scale} if len(refs) > 1 else dict(ref))
            continue
        name = ref.get("name")
        if not isinstance(name, str) or not name:
            error(manifest, f"{path}.name", f"expected the name of the InferencePool, got {show(name)}")
            return None
        v1_ref = {**copy.deepcopy(ref), "group": V1_GROUP, "kind": "InferencePool"}
        v1_ref["name"] = v1_pool_name(name)
        if v1_share < 100:
            result.append({**ref, "weight": weight * (100 - v1_share)})
        result.append({**v1_ref, "weight": weight * v1_share})
    if any(ref.get("weight", DEFAULT_BACKEND_WEIGHT) > MAX_BACKEND_WEIGHT for ref in result):
        error(
            manifest,
            f"spec.rules[{rule_index}].backendRefs",
            f"weights above {MAX_BACKEND_WEIGHT // 100} cannot be split in percent within the Gateway API "
            f"maximum of {MAX_BACKEND_WEIGHT}; divide this rule's weights by a common factor first",
        )
        return None
    return result
