"""Picking objects out of rendered manifests (kustomize, Helm)."""

from __future__ import annotations

from typing import Any


def one(objects: list[dict[str, Any]], kind: str, api_version: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and api_version in (None, o["apiVersion"])]
    assert len(found) == 1, f"expected one {kind}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def epp_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "epp")
