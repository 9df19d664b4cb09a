"""deploy/crds: valid CustomResourceDefinitions with structural schemas that accept what users write (the
guides' objects) and reject what the API forbids (reference §6)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.deploy.validation import core_errors, crd_documents, crd_errors, crd_schemas, structural_problems

SERVED = {
    ("inference.networking.k8s.io/v1", "InferencePool"),
    ("inference.networking.x-k8s.io/v1alpha2", "InferencePool"),
    ("inference.networking.x-k8s.io/v1alpha2", "InferenceModel"),
    ("inference.networking.x-k8s.io/v1alpha2", "InferenceObjective"),
    ("inference.networking.x-k8s.io/v1alpha2", "InferenceModelRewrite"),
}

# The InferencePool of the Istio guide (shared/seeds/003) and the InferenceObjective of the migration guide
# (shared/seeds/000), as the guides print them.
ISTIO_GUIDE_POOL = yaml.safe_load("""
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata:
  name: inference-model-server-pool
  namespace: inference-model-server
spec:
  selector:
    matchLabels:
      app: inference-model-server
  targetPorts:
    - number: 8000
  endpointPickerRef:
    name: endpoint-picker-svc
    port:
      number: 9002
""")
GUIDE_OBJECTIVE = yaml.safe_load("""
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata:
  name: food-review
spec:
  priority: 2
  poolRef:
    group: inference.networking.k8s.io
    name: vllm-llama3-8b-instruct-ga
""")
ALPHA_POOL = yaml.safe_load("""
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata: {name: vllm-llama3-8b-instruct-preview}
spec:
  selector: {app: vllm-llama3-8b-instruct}
  targetPortNumber: 8000
  extensionRef: {name: vllm-llama3-8b-instruct-preview-epp, portNumber: 9002, failureMode: FailClose}
""")
ALPHA_MODEL = yaml.safe_load("""
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: food-review}
spec:
  modelName: food-review
  criticality: Critical
  poolRef: {name: vllm-llama3-8b-instruct-preview}
  targetModels: [{name: food-review-1, weight: 90}, {name: food-review-2, weight: 10}]
""")
REWRITE = yaml.safe_load("""
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: {name: canary}
spec:
  poolRef: {group: inference.networking.k8s.io, name: pool}
  rules:
  - matches: [{model: {type: Exact, value: reviews}}]
    targets: [{modelRewrite: reviews-v1, weight: 90}, {modelRewrite: reviews-v2, weight: 10}]
  - targets: [{modelRewrite: fallback-model}]
""")
VALID = [ISTIO_GUIDE_POOL, GUIDE_OBJECTIVE, ALPHA_POOL, ALPHA_MODEL, REWRITE]


def _set(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of obj with the dotted path set (or deleted when value is ...)."""
    out = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node: Any = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


INVALID = [
    (ISTIO_GUIDE_POOL, "spec.selector", ..., "'selector' is a required property"),
    (ISTIO_GUIDE_POOL, "spec.selector.matchLabels", {}, "should be non-empty"),
    (ISTIO_GUIDE_POOL, "spec.selector.matchLabels", {f"k{i}": "v" for i in range(65)}, "too many properties"),
    (ISTIO_GUIDE_POOL, "spec.targetPorts", [{"number": 8000 + i} for i in range(9)], "is too long"),
    (ISTIO_GUIDE_POOL, "spec.targetPorts", [{"number": 8000}, {"number": 8000}], "duplicate entry"),
    (ISTIO_GUIDE_POOL, "spec.targetPorts", [], "should be non-empty"),
    (ISTIO_GUIDE_POOL, "spec.targetPorts.0.number", 70000, "is greater than the maximum"),
    (ISTIO_GUIDE_POOL, "spec.appProtocol", "grpc", "is not one of"),
    (ISTIO_GUIDE_POOL, "spec.endpointPickerRef", ..., "'endpointPickerRef' is a required property"),
    (ISTIO_GUIDE_POOL, "spec.endpointPickerRef.port", ..., "is not valid under any of the given schemas"),
    (ISTIO_GUIDE_POOL, "spec.endpointPickerRef.failureMode", "Retry", "is not one of"),
    (ISTIO_GUIDE_POOL, "spec.targetPortNumber", 8000, "Additional properties are not allowed"),
    (GUIDE_OBJECTIVE, "spec.poolRef", ..., "'poolRef' is a required property"),
    (GUIDE_OBJECTIVE, "spec.priority", "high", "is not of type 'integer'"),
    (GUIDE_OBJECTIVE, "spec.criticality", "Critical", "Additional properties are not allowed"),
    (ALPHA_POOL, "spec.selector", {"matchLabels": {"app": "x"}}, "is not of type 'string'"),
    (ALPHA_POOL, "spec.targetPortNumber", "8000", "is not of type 'integer'"),
    (ALPHA_POOL, "spec.extensionRef", ..., "'extensionRef' is a required property"),
    (ALPHA_MODEL, "spec.criticality", "Important", "is not one of"),
    (ALPHA_MODEL, "spec.modelName", ..., "'modelName' is a required property"),
    (REWRITE, "spec.rules.0.targets.0.weight", -1, "is less than the minimum of 0"),
    (REWRITE, "spec.rules.0.targets.1.weight", 1_000_001, "is greater than the maximum"),
    (REWRITE, "spec.rules.0.matches.0.model.type", "Prefix", "is not one of"),
    (REWRITE, "spec.rules.1.targets", [], "should be non-empty"),
    (REWRITE, "spec.rules", [], "should be non-empty"),
]


def test_the_crds_serve_the_inference_kinds() -> None:
    assert set(crd_schemas()) == SERVED


@pytest.mark.parametrize("crd", crd_documents(), ids=lambda c: c["metadata"]["name"])
def test_crd_is_a_valid_custom_resource_definition(crd: dict[str, Any]) -> None:
    assert core_errors(crd) == []
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
    assert spec["scope"] == "Namespaced"
    assert sum(v["storage"] for v in spec["versions"]) == 1
    for version in spec["versions"]:
        assert version["served"] is True
        assert version["subresources"] == {"status": {}}
        schema = version["schema"]["openAPIV3Schema"]
        assert structural_problems(schema) == []
        assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}


def test_v1_pool_has_the_infpool_short_name_and_alpha_kinds_are_deprecated() -> None:
    by_name = {c["metadata"]["name"]: c for c in crd_documents()}
    assert by_name["inferencepools.inference.networking.k8s.io"]["spec"]["names"]["shortNames"] == ["infpool"]
    for name in ("inferencepools.inference.networking.x-k8s.io", "inferencemodels.inference.networking.x-k8s.io"):
        version = by_name[name]["spec"]["versions"][0]
        assert version["deprecated"] is True and "epp migrate" in version["deprecationWarning"]
        assert len(version["deprecationWarning"]) <= 256
        assert "shortNames" not in by_name[name]["spec"]["names"]


@pytest.mark.parametrize("obj", VALID, ids=lambda o: f"{o['apiVersion']}-{o['kind']}")
def test_valid_objects_pass(obj: dict[str, Any]) -> None:
    assert crd_errors(obj) == []


def test_endpoint_picker_port_is_optional_for_other_kinds() -> None:
    ref = {"group": "example.com", "kind": "Picker", "name": "custom"}
    assert crd_errors(_set(ISTIO_GUIDE_POOL, "spec.endpointPickerRef", ref)) == []


@pytest.mark.parametrize(
    ("obj", "path", "value", "message"), INVALID, ids=lambda x: x if isinstance(x, str) and "." in x else None
)
def test_invalid_objects_fail(obj: dict[str, Any], path: str, value: Any, message: str) -> None:
    errors = crd_errors(_set(obj, path, value))
    assert any(message in e for e in errors), errors
