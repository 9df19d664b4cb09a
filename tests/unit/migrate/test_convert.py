"""Conversion rules beyond the guide: weighted targetModels, criticalities, Lists from kubectl, routes with
other backends, objects that already point at pools, and clear errors for what cannot be converted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from epp.migrate.convert import CRITICALITY_PRIORITY, MigrationError, Options, Plan, plan_migration
from epp.migrate.manifests import load_paths, load_text
from tests.deploy.validation import object_errors

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "migrate"
ALPHA = "inference.networking.x-k8s.io/v1alpha2"


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, (kind, name, [o["metadata"]["name"] for o in objects if o["kind"] == kind])
    return matches[0]


@pytest.fixture(scope="module")
def canary() -> Plan:
    return plan_migration(load_paths([str(FIXTURES / "canary")]), Options(epp_services={"llama": "llama-v1-epp"}))


def convert(text: str, options: Options | None = None) -> Plan:
    return plan_migration(load_text(text, "test.yaml"), options or Options())


def test_everything_written_validates(canary: Plan) -> None:
    for obj in canary.resources + canary.split_routes + canary.final_routes:
        assert object_errors(obj) == [], obj


def test_pool_fields_and_metadata(canary: Plan) -> None:
    pool = find(canary.resources, "InferencePool", "llama")
    assert pool["metadata"] == {"name": "llama", "namespace": "llm", "labels": {"team": "serving"}}
    assert pool["spec"] == {
        "selector": {"matchLabels": {"app": "vllm-llama", "tier": "gpu"}},
        "targetPorts": [{"number": 8000}],
        "endpointPickerRef": {"name": "llama-v1-epp", "port": {"number": 9102}, "failureMode": "FailOpen"},
    }


def test_kubectl_list_output_is_cleaned(canary: Plan) -> None:
    pool = find(canary.resources, "InferencePool", "mistral")
    # server-set fields, status and the last-applied annotation are dropped; other annotations stay
    assert pool["metadata"] == {"name": "mistral", "namespace": "llm", "annotations": {"owner": "platform-team"}}
    assert "status" not in pool
    assert pool["spec"]["endpointPickerRef"] == {
        "group": "",
        "kind": "Service",
        "name": "mistral-epp",
        "port": {"number": 9002},
    }
    assert find(canary.resources, "InferenceObjective", "mistral-chat")["spec"]["priority"] == -1


def test_criticality_becomes_priority(canary: Plan) -> None:
    priorities = {
        o["metadata"]["name"]: o["spec"].get("priority") for o in canary.resources if o["kind"] == "InferenceObjective"
    }
    assert priorities == {"reviews": 0, "chat": None, "batch": -1, "even-split": 2, "mistral-chat": -1}
    assert CRITICALITY_PRIORITY["Sheddable"] < 0 <= CRITICALITY_PRIORITY["Standard"] < CRITICALITY_PRIORITY["Critical"]


def test_weighted_target_models_become_a_canary_rewrite(canary: Plan) -> None:
    rewrite = find(canary.resources, "InferenceModelRewrite", "reviews")
    assert rewrite["apiVersion"] == "inference.networking.x-k8s.io/v1alpha2"
    assert rewrite["metadata"] == {"name": "reviews", "namespace": "llm"}
    assert rewrite["spec"] == {
        "poolRef": {"group": "inference.networking.k8s.io", "name": "llama"},
        "rules": [
            {
                "matches": [{"model": {"type": "Exact", "value": "reviews"}}],
                "targets": [{"modelRewrite": "reviews-v1", "weight": 90}, {"modelRewrite": "reviews-v2", "weight": 10}],
            }
        ],
    }


def test_unweighted_targets_split_evenly_and_an_alias_is_a_rewrite(canary: Plan) -> None:
    even = find(canary.resources, "InferenceModelRewrite", "even-split")["spec"]["rules"][0]
    assert even["matches"] == [{"model": {"type": "Exact", "value": "sql"}}]
    assert even["targets"] == [{"modelRewrite": "sql-a", "weight": 1}, {"modelRewrite": "sql-b", "weight": 1}]
    alias = find(canary.resources, "InferenceModelRewrite", "chat")["spec"]["rules"][0]
    assert alias["targets"] == [{"modelRewrite": "meta-llama/Llama-3.1-8B-Instruct", "weight": 1}]
    # batch is served under its own name: no rewrite
    assert not [
        o for o in canary.resources if o["kind"] == "InferenceModelRewrite" and o["metadata"]["name"] == "batch"
    ]


def test_pools_come_first(canary: Plan) -> None:
    kinds = [o["kind"] for o in canary.resources]
    assert kinds == sorted(kinds, key=["InferencePool", "InferenceObjective", "InferenceModelRewrite"].index)


def test_route_with_other_backends_keeps_their_share(canary: Plan) -> None:
    split = find(canary.split_routes, "HTTPRoute", "llm")["spec"]["rules"]
    final = find(canary.final_routes, "HTTPRoute", "llm")["spec"]["rules"]
    # pool weight 3, fallback 1: the pools keep 3/4 of the rule, half of it each in step 2
    assert [(r.get("group"), r["name"], r["weight"]) for r in split[0]["backendRefs"]] == [
        ("inference.networking.x-k8s.io", "llama", 150),
        ("inference.networking.k8s.io", "llama", 150),
        (None, "fallback", 100),
    ]
    assert [(r.get("group"), r["name"], r["weight"]) for r in final[0]["backendRefs"]] == [
        ("inference.networking.k8s.io", "llama", 300),
        (None, "fallback", 100),
    ]
    assert split[0]["matches"] == final[0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    # a rule without a v1alpha2 pool is left exactly as it was
    assert (
        split[1]
        == final[1]
        == {
            "matches": [{"path": {"type": "Exact", "value": "/healthz"}}],
            "backendRefs": [{"name": "health", "port": 8080}],
        }
    )


def test_objectives_and_rewrites_on_a_v1alpha2_pool_are_repointed() -> None:
    plan = convert(
        """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: batch, namespace: llm}
spec:
  priority: -5
  poolRef: {group: inference.networking.x-k8s.io, name: old}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: already-v1}
spec:
  poolRef: {name: new}
""",
        Options(pool_names={"old": "new"}),
    )
    (objective,) = plan.resources
    assert objective["metadata"] == {"name": "batch", "namespace": "llm"}
    assert objective["spec"] == {"priority": -5, "poolRef": {"group": "inference.networking.k8s.io", "name": "new"}}


def test_priority_overrides() -> None:
    text = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: m}
spec: {modelName: m, criticality: Critical, poolRef: {name: p}}
"""
    plan = convert(text, Options(priorities={**CRITICALITY_PRIORITY, "Critical": 10}))
    assert plan.resources[0]["spec"]["priority"] == 10


def test_weight_zero_targets_are_left_out_with_a_note() -> None:
    plan = convert(
        """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: m}
spec:
  modelName: m
  poolRef: {name: p}
  targetModels: [{name: m-v1, weight: 100}, {name: m-v2, weight: 0}]
"""
    )
    rewrite = find(plan.resources, "InferenceModelRewrite", "m")
    assert rewrite["spec"]["rules"][0]["targets"] == [{"modelRewrite": "m-v1", "weight": 100}]
    assert any("m-v2" in note and "weight 0" in note for note in plan.notes)


def test_nothing_to_convert_gives_an_empty_plan() -> None:
    plan = convert("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert (plan.resources, plan.split_routes, plan.final_routes) == ([], [], [])


def test_malformed_objects_are_all_reported_with_file_document_and_field() -> None:
    with pytest.raises(MigrationError) as caught:
        plan_migration(load_paths([str(FIXTURES / "malformed" / "bad-fields.yaml")]), Options())
    errors = caught.value.errors
    source = str(FIXTURES / "malformed" / "bad-fields.yaml")
    assert all(e.startswith(f"{source}: document ") for e in errors)
    expected = [
        ("document 1 (line 1): InferencePool pool-a: spec.selector:", "map of pod labels, got ['app=vllm']"),
        ("document 1 (line 1): InferencePool pool-a: spec.targetPortNumber:", "without quotes"),
        ("document 1 (line 1): InferencePool pool-a: spec.extensionRef:", "--epp-service pool-a=SERVICE"),
        ("document 2 (line 10): InferenceModel mixed: spec.criticality:", "'Important' is not one of"),
        ("document 2 (line 10): InferenceModel mixed: spec.targetModels:", "mixed-v1 set, mixed-v2 unset"),
    ]
    assert len(errors) == len(expected)
    for error, (where, what) in zip(errors, expected, strict=True):
        assert where in error and what in error, error


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{modelName: m, poolRef: {kind: Service, name: p}}", "spec.poolRef.kind: 'Service' is not InferencePool"),
        ("{modelName: m}", "spec.poolRef.name: expected the name of an InferencePool, got nothing"),
        ("{modelName: '', poolRef: {name: p}}", "spec.modelName: expected the model name"),
        ("{modelName: m, poolRef: {name: p}, targetModels: [{weight: 1}]}", "spec.targetModels[0].name"),
        ("{modelName: m, poolRef: {name: p}, targetModels: [{name: a, weight: 0}]}", "every target has weight 0"),
        ("{modelName: m, poolRef: {name: p}, targetModels: {name: a}}", "expected a list of {name, weight}"),
    ],
)
def test_model_errors(spec: str, message: str) -> None:
    text = f"apiVersion: {ALPHA}\nkind: InferenceModel\nmetadata: {{name: m}}\nspec: {spec}\n"
    with pytest.raises(MigrationError) as caught:
        convert(text)
    assert any(message in e for e in caught.value.errors), caught.value.errors


def test_two_pools_renamed_to_one_name_is_an_error() -> None:
    pool = "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferencePool\nmetadata: {{name: {}}}\n"
    pool += "spec: {{selector: {{app: x}}, targetPortNumber: 8000, extensionRef: {{name: e}}}}\n"
    text = pool.format("a") + "---\n" + pool.format("b")
    with pytest.raises(MigrationError) as caught:
        convert(text, Options(pool_names={"a": "v1", "b": "v1"}))
    (error,) = caught.value.errors
    assert "document 2" in error and "already written for test.yaml: document 1" in error


def test_route_weights_too_large_to_split() -> None:
    text = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  rules:
  - backendRefs: [{group: inference.networking.x-k8s.io, kind: InferencePool, name: p, weight: 20000}]
"""
    with pytest.raises(MigrationError) as caught:
        convert(text)
    (error,) = caught.value.errors
    assert "spec.rules[0].backendRefs" in error and "divide this rule's weights" in error
