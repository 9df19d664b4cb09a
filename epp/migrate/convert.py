"""v1alpha2 (preview) inference-extension objects → the v1 API, and the HTTPRoute steps of the zero-downtime path.

- InferencePool `inference.networking.x-k8s.io/v1alpha2` → `inference.networking.k8s.io/v1`:
  `selector` map → `selector.matchLabels`, `targetPortNumber` → `targetPorts: [{number}]`,
  `extensionRef {name, portNumber, ...}` → `endpointPickerRef {name, port: {number}, ...}`.
- InferenceModel → InferenceObjective (same name; `criticality` → `priority`, CRITICALITY_PRIORITY) and, when
  its `targetModels` change the model name or split traffic, an InferenceModelRewrite (same name) with one
  exact-match rule on `modelName` and the targets with their weights.
- InferenceObjective / InferenceModelRewrite whose poolRef names a v1alpha2 pool → the same, pointed at v1.
- HTTPRoute backendRefs to a v1alpha2 pool → step 2, both pools side by side with a weight split (the guide's
  50/50 by default), and step 3, 100 % to the v1 pool.

Every problem in every object is reported at once, each naming the file, the document and the field.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from epp.migrate.apis import (
    ALPHA_GROUP,
    ALPHA_OBJECTS_API,
    GATEWAY_GROUP,
    ROUTE_KINDS,
    V1_GROUP,
    V1_POOL_API,
    is_alpha_pool_ref,
    is_port,
    object_metadata,
    show,
)
from epp.migrate.manifests import Manifest
from epp.migrate.routes import route_steps

#: v1alpha2 criticality → v1 priority. Sheddable must be negative (only negative priorities are shed when the
#: pool is saturated); Standard was the default and 0 is the v1 default; Critical ranks above both, at 2 as in
#: the migration guide's InferenceObjectives, leaving room for a level in between.
CRITICALITY_PRIORITY: dict[str, int] = {"Critical": 2, "Standard": 0, "Sheddable": -1}
#: The v1alpha2 API tells implementations to assume this ext_proc port when extensionRef.portNumber is unset.
DEFAULT_EPP_PORT = 9002
_KIND_ORDER = {"InferencePool": 0, "InferenceObjective": 1, "InferenceModelRewrite": 2}


class MigrationError(ValueError):
    """Objects that cannot be converted; `errors` holds one line per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)


@dataclass
class Options:
    #: v1alpha2 pool name → name of its v1 pool (default: the same name; the API groups differ)
    pool_names: dict[str, str] = field(default_factory=dict)
    #: v1 pool name → its EPP Service (default: the v1alpha2 pool's extensionRef.name)
    epp_services: dict[str, str] = field(default_factory=dict)
    #: share of traffic (percent) the v1 pool gets in the side-by-side step
    v1_weight: int = 50
    priorities: dict[str, int] = field(default_factory=lambda: dict(CRITICALITY_PRIORITY))

    def v1_pool_name(self, alpha_name: str) -> str:
        return self.pool_names.get(alpha_name, alpha_name)


@dataclass
class Plan:
    #: step 1: v1 InferencePools, InferenceObjectives, InferenceModelRewrites
    resources: list[dict[str, Any]] = field(default_factory=list)
    #: step 2: routes to both pools, traffic split
    split_routes: list[dict[str, Any]] = field(default_factory=list)
    #: step 3: routes to the v1 pools only
    final_routes: list[dict[str, Any]] = field(default_factory=list)
    #: things the user should know (printed on stderr)
    notes: list[str] = field(default_factory=list)


def plan_migration(manifests: Iterable[Manifest], options: Options) -> Plan:
    """The v1 objects and route steps for every v1alpha2 object in `manifests`; raises MigrationError."""
    converter = _Converter(options)
    for manifest in manifests:
        converter.convert(manifest)
    return converter.finish()


class _Converter:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.plan = Plan()
        self.errors: list[str] = []
        #: (kind, namespace, name) of every object written → where it came from
        self.written: dict[tuple[str, str | None, str], str] = {}

    def convert(self, manifest: Manifest) -> None:
        for key in ("name", "namespace"):
            value = manifest.metadata.get(key)
            if value is not None and not isinstance(value, str):
                self._error(manifest, f"metadata.{key}", f"expected a string, got {show(value)}")
                return
        if manifest.group == ALPHA_GROUP and manifest.kind == "InferencePool":
            self._pool(manifest)
        elif manifest.group == ALPHA_GROUP and manifest.kind == "InferenceModel":
            self._model(manifest)
        elif manifest.group == ALPHA_GROUP and manifest.kind in ("InferenceObjective", "InferenceModelRewrite"):
            self._repoint(manifest)
        elif manifest.group == GATEWAY_GROUP and manifest.kind in ROUTE_KINDS:
            self._route(manifest)

    def finish(self) -> Plan:
        if self.errors:
            raise MigrationError(self.errors)
        # pools first, then what refers to them; input order otherwise
        self.plan.resources.sort(key=lambda obj: _KIND_ORDER.get(str(obj["kind"]), len(_KIND_ORDER)))
        return self.plan

    # -- helpers -----------------------------------------------------------------------------------------

    def _error(self, manifest: Manifest, path: str, message: str) -> None:
        self.errors.append(f"{manifest.source}: {manifest.kind} {manifest.display_name}: {path}: {message}")

    def _write(self, manifest: Manifest, obj: dict[str, Any], into: list[dict[str, Any]]) -> None:
        metadata = obj["metadata"]
        key = (str(obj["kind"]), metadata.get("namespace"), str(metadata["name"]))
        earlier = self.written.get(key)
        if earlier is not None and into is self.plan.resources:
            self._error(
                manifest,
                "metadata.name",
                f"would write {key[0]} {metadata['name']!r}, already written for {earlier}; "
                "rename one of them (for pools: --rename-pool OLD=NEW)",
            )
            return
        self.written[key] = str(manifest.source)
        into.append(obj)

    def _spec(self, manifest: Manifest) -> dict[str, Any] | None:
        if not manifest.name:
            self._error(manifest, "metadata.name", "missing; every object needs a name")
            return None
        spec = manifest.obj.get("spec")
        if not isinstance(spec, dict):
            self._error(manifest, "spec", f"expected a mapping, got {show(spec)}")
            return None
        return spec

    def _required(self, manifest: Manifest, spec: Mapping[str, Any], key: str, kind: type, expected: str) -> Any:
        """`spec[key]` when it is a non-empty `kind`; otherwise None, with the error recorded."""
        value = spec.get(key)
        if isinstance(value, kind) and value:
            return value
        self._error(manifest, f"spec.{key}", f"expected {expected}, got {show(value)}")
        return None

    def _pool_ref(self, manifest: Manifest, spec: Mapping[str, Any]) -> dict[str, Any] | None:
        """The v1 poolRef for an object whose spec.poolRef names a (v1alpha2) pool."""
        ref = spec.get("poolRef")
        if not isinstance(ref, dict) or not isinstance(ref.get("name"), str) or not ref["name"]:
            self._error(manifest, "spec.poolRef.name", f"expected the name of an InferencePool, got {show(ref)}")
            return None
        kind = ref.get("kind", "InferencePool")
        if kind != "InferencePool":
            self._error(manifest, "spec.poolRef.kind", f"{kind!r} is not InferencePool; only pools can be migrated")
            return None
        return {"group": V1_GROUP, "name": self.options.v1_pool_name(ref["name"])}

    # -- InferencePool -----------------------------------------------------------------------------------

    def _pool(self, manifest: Manifest) -> None:
        spec = self._spec(manifest)
        if spec is None:
            return
        errors_before = len(self.errors)
        selector = self._required(manifest, spec, "selector", dict, "a non-empty map of pod labels")
        if selector is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in selector.items()):
            bad = next(f"{k}: {v!r}" for k, v in selector.items() if not isinstance(v, str) or not isinstance(k, str))
            self._error(manifest, "spec.selector", f"label values must be strings ({bad}); quote the value")
        port = spec.get("targetPortNumber")
        if not is_port(port):
            hint = "; write the number without quotes" if isinstance(port, str) and port.isdigit() else ""
            self._error(manifest, "spec.targetPortNumber", f"expected a port number 1..65535, got {show(port)}{hint}")
        v1_name = self.options.v1_pool_name(manifest.name)
        picker = self._endpoint_picker_ref(manifest, spec, v1_name)
        if len(self.errors) > errors_before or picker is None or not isinstance(selector, dict):
            return
        pool = {
            "apiVersion": V1_POOL_API,
            "kind": "InferencePool",
            "metadata": object_metadata(manifest, v1_name),
            "spec": {
                "selector": {"matchLabels": dict(selector)},
                "targetPorts": [{"number": port}],
                "endpointPickerRef": picker,
            },
        }
        self._write(manifest, pool, self.plan.resources)

    def _endpoint_picker_ref(self, manifest: Manifest, spec: Mapping[str, Any], v1_name: str) -> dict[str, Any] | None:
        ref = spec.get("extensionRef")
        service = self.options.epp_services.get(v1_name)
        if ref is None and service is None:
            self._error(
                manifest,
                "spec.extensionRef",
                "missing; the v1 InferencePool needs spec.endpointPickerRef: add extensionRef (the EPP Service) "
                f"or pass --epp-service {v1_name}=SERVICE",
            )
            return None
        ref = ref if ref is not None else {}
        if not isinstance(ref, dict):
            self._error(manifest, "spec.extensionRef", f"expected a mapping, got {show(ref)}")
            return None
        name = service if service is not None else ref.get("name")
        if not isinstance(name, str) or not name:
            self._error(manifest, "spec.extensionRef.name", f"expected the EPP Service name, got {show(name)}")
            return None
        picker: dict[str, Any] = {}
        for key in ("group", "kind"):
            if key in ref:
                picker[key] = ref[key]
        picker["name"] = name
        number = ref.get("portNumber")
        if number is not None and not is_port(number):
            self._error(manifest, "spec.extensionRef.portNumber", f"expected a port 1..65535, got {show(number)}")
            return None
        if ref.get("kind", "Service") == "Service" or number is not None:
            picker["port"] = {"number": DEFAULT_EPP_PORT if number is None else number}
        failure_mode = ref.get("failureMode")
        if failure_mode is not None:
            if failure_mode not in ("FailOpen", "FailClose"):
                self._error(manifest, "spec.extensionRef.failureMode", f"{failure_mode!r}: use FailOpen or FailClose")
                return None
            picker["failureMode"] = failure_mode
        if service is None:
            self.plan.notes.append(
                f"v1 InferencePool {v1_name} uses EPP Service {name!r}, the one of the v1alpha2 pool "
                f"{manifest.name}: right for the simple path (restart that EPP with --pool-name {v1_name}); "
                f"side by side each pool needs its own EPP: pass --epp-service {v1_name}=SERVICE"
            )
        return picker

    # -- InferenceModel ----------------------------------------------------------------------------------

    def _model(self, manifest: Manifest) -> None:
        spec = self._spec(manifest)
        if spec is None:
            return
        errors_before = len(self.errors)
        model_name = self._required(manifest, spec, "modelName", str, "the model name clients send")
        criticality = spec.get("criticality")
        if criticality is not None and (not isinstance(criticality, str) or criticality not in self.options.priorities):
            known = ", ".join(self.options.priorities)
            self._error(manifest, "spec.criticality", f"{show(criticality)} is not one of {known}")
        pool_ref = self._pool_ref(manifest, spec)
        targets = self._targets(manifest, spec.get("targetModels"))
        if len(self.errors) > errors_before or pool_ref is None or targets is None:
            return
        objective_spec: dict[str, Any] = {}
        if criticality is not None:
            objective_spec["priority"] = self.options.priorities[criticality]
        objective_spec["poolRef"] = pool_ref
        objective = {
            "apiVersion": ALPHA_OBJECTS_API,
            "kind": "InferenceObjective",
            "metadata": object_metadata(manifest, manifest.name),
            "spec": objective_spec,
        }
        self._write(manifest, objective, self.plan.resources)
        if not targets or [name for name, _ in targets] == [model_name]:
            return  # served under its own name: nothing to rewrite
        rewrite = {
            "apiVersion": ALPHA_OBJECTS_API,
            "kind": "InferenceModelRewrite",
            "metadata": object_metadata(manifest, manifest.name),
            "spec": {
                "poolRef": dict(pool_ref),
                "rules": [
                    {
                        "matches": [{"model": {"type": "Exact", "value": model_name}}],
                        "targets": [{"modelRewrite": name, "weight": weight} for name, weight in targets],
                    }
                ],
            },
        }
        self._write(manifest, rewrite, self.plan.resources)

    def _targets(self, manifest: Manifest, raw: Any) -> list[tuple[str, int]] | None:
        """(name, weight) of each target model that receives traffic; weights unset on all ⇒ 1 each."""
        if raw is None:
            return []
        if not isinstance(raw, list):
            self._error(manifest, "spec.targetModels", f"expected a list of {{name, weight}}, got {show(raw)}")
            return None
        targets: list[tuple[str, int | None]] = []
        for index, entry in enumerate(raw):
            path = f"spec.targetModels[{index}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
                self._error(manifest, f"{path}.name", f"expected a model name, got {show(entry)}")
                return None
            weight = entry.get("weight")
            if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int) or weight < 0):
                self._error(manifest, f"{path}.weight", f"expected a weight 0..1000000, got {show(weight)}")
                return None
            targets.append((entry["name"], weight))
        weighted = [name for name, weight in targets if weight is not None]
        if weighted and len(weighted) != len(targets):
            unweighted = [name for name, weight in targets if weight is None]
            self._error(
                manifest,
                "spec.targetModels",
                f"weights must be set on all targets or on none ({', '.join(weighted)} set, "
                f"{', '.join(unweighted)} unset)",
            )
            return None
        kept = [(name, 1 if weight is None else weight) for name, weight in targets]
        dropped = [name for name, weight in kept if weight == 0]
        if dropped:
            kept = [(name, weight) for name, weight in kept if weight > 0]
            if not kept:
                self._error(manifest, "spec.targetModels", "every target has weight 0; give one a positive weight")
                return None
            self.plan.notes.append(
                f"{manifest.source}: InferenceModel {manifest.display_name}: target(s) {', '.join(dropped)} "
                "have weight 0 and receive no traffic; left out of the InferenceModelRewrite (weights are 1..1000000)"
            )
        return kept

    # -- InferenceObjective / InferenceModelRewrite pointing at a v1alpha2 pool ------------------------------

    def _repoint(self, manifest: Manifest) -> None:
        spec = manifest.obj.get("spec")
        if not isinstance(spec, dict) or not isinstance(spec.get("poolRef"), dict):
            return
        if not is_alpha_pool_ref(spec["poolRef"], V1_GROUP):
            return  # already refers to a v1 pool
        pool_ref = self._pool_ref(manifest, spec)
        if pool_ref is None:
            return
        converted = {
            "apiVersion": manifest.api_version,
            "kind": manifest.kind,
            "metadata": object_metadata(manifest, manifest.name),
            "spec": {**copy.deepcopy(spec), "poolRef": pool_ref},
        }
        self._write(manifest, converted, self.plan.resources)

    # -- HTTPRoute / GRPCRoute ---------------------------------------------------------------------------

    def _route(self, manifest: Manifest) -> None:
        steps = route_steps(manifest, self.options.v1_weight, self.options.v1_pool_name, self._error)
        if steps is not None:
            split, final = steps
            self._write(manifest, split, self.plan.split_routes)
            self._write(manifest, final, self.plan.final_routes)
