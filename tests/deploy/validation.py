"""Validation of Kubernetes objects, shared by tests/deploy and tests/unit/migrate.

- Core kinds (apps/v1, v1, rbac, autoscaling, apiextensions, ...): the `kubernetes-validate` package's
  schemas of Kubernetes KUBERNETES_VERSION, strict (unknown fields are errors, as `kubectl --validate=strict`).
- Inference kinds: the openAPIV3Schema of our CRDs in deploy/crds, with jsonschema. Objects are closed
  where the schema lists properties (the API server would prune unknown fields; we reject them), and
  `x-kubernetes-list-type: map|set` uniqueness is checked as the API server checks it.
- Other vendors' kinds (Istio, GKE, Gateway API): third_party_schemas.yaml, small schemas of the fields their
  documentation lists for what we use.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CRDS = DEPLOY / "crds"
THIRD_PARTY = Path(__file__).with_name("third_party_schemas.yaml")
#: the oldest Kubernetes the manifests are written for (gRPC probes are GA since 1.27)
KUBERNETES_VERSION = "1.30"
KUSTOMIZE_GROUP = "kustomize.config.k8s.io"
EPP_CONFIG_KIND = "EndpointPickerConfig"


class NoValidator(LookupError):
    pass


@dataclass(frozen=True)
class Doc:
    path: Path
    index: int
    obj: dict[str, Any]

    @property
    def where(self) -> str:
        name = self.obj.get("metadata", {}).get("name", "?") if isinstance(self.obj.get("metadata"), dict) else "?"
        return f"{self.path.relative_to(REPO)} document {self.index} ({self.obj.get('kind')} {name})"


def load_docs(path: Path, text: str | None = None) -> list[Doc]:
    """The mapping documents of a YAML file (or of `text`, attributed to `path`)."""
    content = path.read_text() if text is None else text
    return [Doc(path, i, d) for i, d in enumerate(yaml.safe_load_all(content), start=1) if isinstance(d, dict)]


def group_of(obj: Mapping[str, Any]) -> str:
    return str(obj.get("apiVersion", "")).rpartition("/")[0]


# -- CRD schemas -------------------------------------------------------------------------------------------


@functools.cache
def crd_documents() -> tuple[dict[str, Any], ...]:
    docs = []
    for path in sorted(CRDS.glob("*.yaml")):
        docs.extend(d.obj for d in load_docs(path) if d.obj.get("kind") == "CustomResourceDefinition")
    return tuple(docs)


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → openAPIV3Schema of every served version of every CRD in deploy/crds."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for crd in crd_documents():
        spec = crd["spec"]
        for version in spec["versions"]:
            if version.get("served"):
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


@functools.cache
def third_party_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    entries = yaml.safe_load(THIRD_PARTY.read_text())
    return {(e["apiVersion"], e["kind"]): e["schema"] for e in entries}


def _closed(schema: Any) -> Any:
    """A copy where every object that lists properties rejects others (unless it preserves unknown fields)."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) if k not in ("enum", "default", "required") else v for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
        and schema.get("type") == "object"
    ):
        out["additionalProperties"] = False
    return out


def _list_type(validator: Any, list_type: Any, instance: Any, schema: Mapping[str, Any]) -> Iterator[Any]:
    if not isinstance(instance, list) or list_type not in ("map", "set"):
        return
    keys = schema.get("x-kubernetes-list-map-keys", [])
    seen: set[str] = set()
    for item in instance:
        if list_type == "map" and isinstance(item, Mapping):
            identity = yaml.safe_dump({k: item.get(k) for k in keys})
        else:
            identity = yaml.safe_dump(item)
        if identity in seen:
            yield jsonschema.ValidationError(
                f"duplicate entry {identity.strip()!r} in a list of type {list_type} (keys {keys})"
            )
        seen.add(identity)


_KubeValidator = jsonschema.validators.extend(jsonschema.Draft7Validator, {"x-kubernetes-list-type": _list_type})


def schema_errors(obj: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    validator = _KubeValidator(_closed(schema), format_checker=jsonschema.FormatChecker())
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]


def crd_errors(obj: Mapping[str, Any]) -> list[str]:
    key = (str(obj.get("apiVersion")), str(obj.get("kind")))
    schema = crd_schemas().get(key)
    if schema is None:
        raise NoValidator(f"no CRD in deploy/crds serves {key[0]} {key[1]}")
    return schema_errors(obj, schema)


# -- everything --------------------------------------------------------------------------------------------


def core_errors(obj: Mapping[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(dict(obj), KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise NoValidator(str(exc)) from None
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path) or "(root)"
        return [f"{path}: {exc.message}"]
    return []


def validator_name(obj: Mapping[str, Any]) -> str:
    """Which validator applies: crd, third-party or core (raises NoValidator for unknown kinds)."""
    key = (str(obj.get("apiVersion")), str(obj.get("kind")))
    if key in crd_schemas():
        return "crd"
    if key in third_party_schemas():
        return "third-party"
    group = group_of(obj)
    if group == "" or group.endswith(".k8s.io") or "." not in group:
        return "core"
    raise NoValidator(f"nothing validates {key[0]} {key[1]}: add its schema to {THIRD_PARTY.name}")


def object_errors(obj: Mapping[str, Any]) -> list[str]:
    """Schema errors of one Kubernetes object, whichever validator applies to it."""
    kind = validator_name(obj)
    if kind == "crd":
        return crd_errors(obj)
    if kind == "third-party":
        return schema_errors(obj, third_party_schemas()[(str(obj["apiVersion"]), str(obj["kind"]))])
    return core_errors(obj)


def structural_problems(schema: Any, path: str = "", in_junctor: bool = False) -> list[str]:
    """Violations of the API server's structural-schema rules that can be checked without a server."""
    problems: list[str] = []
    if not isinstance(schema, dict):
        return problems
    if in_junctor:
        for key in ("type", "description", "default", "additionalProperties", "nullable"):
            if key in schema:
                problems.append(f"{path}: {key} is not allowed inside allOf/anyOf/oneOf/not")
    elif not ({"type", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields"} & schema.keys()):
        problems.append(f"{path or '(root)'}: every node needs a type")
    if schema.get("uniqueItems"):
        problems.append(f"{path}: uniqueItems true is not allowed; use x-kubernetes-list-type")
    if schema.get("type") == "array" and not in_junctor and "items" not in schema:
        problems.append(f"{path}: an array needs items")
    for name, sub in (schema.get("properties") or {}).items():
        problems += structural_problems(sub, f"{path}.{name}", in_junctor)
    if isinstance(schema.get("items"), dict):
        problems += structural_problems(schema["items"], f"{path}[]", in_junctor)
    if isinstance(schema.get("additionalProperties"), dict):
        problems += structural_problems(schema["additionalProperties"], f"{path}{{}}", in_junctor)
    # fields named in a junctor are checked against the nearest schema outside all junctors (nested
    # junctors are followed by _junctor_fields_declared itself)
    for junctor in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(schema.get(junctor) or []):
            problems += structural_problems(sub, f"{path}.{junctor}[{i}]", True)
            if not in_junctor:
                problems += _junctor_fields_declared(sub, schema, f"{path}.{junctor}[{i}]")
    if "not" in schema:
        problems += structural_problems(schema["not"], f"{path}.not", True)
        if not in_junctor:
            problems += _junctor_fields_declared(schema["not"], schema, f"{path}.not")
    if "default" in schema and not in_junctor:
        problems += [f"{path}.default: {e}" for e in schema_errors({"v": schema["default"]}, _wrap(schema))]
    return problems


def _junctor_fields_declared(sub: Mapping[str, Any], outer: Mapping[str, Any], path: str) -> list[str]:
    """A field named inside a junctor must also be declared outside of it."""
    declared = set((outer.get("properties") or {}).keys())
    named = set((sub.get("properties") or {}).keys()) | set(sub.get("required") or [])
    problems = [f"{path}: {field!r} is not declared in the enclosing properties" for field in named - declared]
    if "not" in sub:
        problems += _junctor_fields_declared(sub["not"], outer, f"{path}.not")
    return problems


def _wrap(schema: Mapping[str, Any]) -> dict[str, Any]:
    inner = {k: copy.deepcopy(v) for k, v in schema.items() if k != "default"}
    return {"type": "object", "properties": {"v": inner}}
