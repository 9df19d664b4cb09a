"""Round trip on the migration guide (shared/seeds/000): the v1alpha2 preview stack in, the guide's v1 objects
out, field by field, and everything written validates against the CRDs in deploy/crds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from epp.migrate.convert import Options, Plan, plan_migration
from epp.migrate.manifests import load_paths
from tests.deploy.validation import object_errors

GUIDE = Path(__file__).resolve().parents[2] / "fixtures" / "migrate" / "guide"
PREVIEW_POOL, GA_POOL = "vllm-llama3-8b-instruct-preview", "vllm-llama3-8b-instruct-ga"
OPTIONS = Options(pool_names={PREVIEW_POOL: GA_POOL}, epp_services={GA_POOL: f"{GA_POOL}-epp"})


def expected(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((GUIDE / name).read_text()) if d]


@pytest.fixture(scope="module")
def plan() -> Plan:
    return plan_migration(load_paths([str(GUIDE / "preview-stack.yaml")]), OPTIONS)


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def test_step1_v1_pool_selects_the_same_pods(plan: Plan) -> None:
    (pool,) = of_kind(plan.resources, "InferencePool")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["metadata"] == {"name": GA_POOL}
    assert pool["spec"]["selector"] == {"matchLabels": {"app": "MODEL_SERVER_DEPLOYMENT_LABEL"}}
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]
    assert pool["spec"]["endpointPickerRef"] == {"name": f"{GA_POOL}-epp", "port": {"number": 9002}}
    assert set(pool["spec"]) == {"selector", "targetPorts", "endpointPickerRef"}


def test_step1_objectives_are_the_guides(plan: Plan) -> None:
    objectives = of_kind(plan.resources, "InferenceObjective")
    assert objectives == expected("expected-objectives.yaml")
    for objective, name in zip(objectives, ("food-review", "base-model"), strict=True):
        assert objective["apiVersion"] == "inference.networking.x-k8s.io/v1alpha2"
        assert objective["metadata"]["name"] == name
        assert objective["spec"]["priority"] == 2
        assert objective["spec"]["poolRef"] == {"group": "inference.networking.k8s.io", "name": GA_POOL}
    # served under their own model names: nothing to rewrite
    assert of_kind(plan.resources, "InferenceModelRewrite") == []


def test_step2_splits_traffic_50_50_as_the_guide(plan: Plan) -> None:
    assert plan.split_routes == expected("expected-httproute-split.yaml")
    (route,) = plan.split_routes
    assert route["metadata"]["name"] == "llm-route"
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "inference-gateway"}
    ]
    preview, ga = route["spec"]["rules"][0]["backendRefs"]
    assert (preview["group"], preview["name"], preview["weight"]) == ("inference.networking.x-k8s.io", PREVIEW_POOL, 50)
    assert (ga["group"], ga["name"], ga["weight"]) == ("inference.networking.k8s.io", GA_POOL, 50)
    assert preview["kind"] == ga["kind"] == "InferencePool"


def test_step3_sends_everything_to_v1_as_the_guide(plan: Plan) -> None:
    assert plan.final_routes == expected("expected-httproute-v1.yaml")
    (route,) = plan.final_routes
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": GA_POOL, "weight": 100}
    ]


def test_every_written_object_validates(plan: Plan) -> None:
    for obj in plan.resources + plan.split_routes + plan.final_routes:
        assert object_errors(obj) == [], obj


def test_the_guides_own_objects_validate() -> None:
    for name in ("expected-objectives.yaml", "expected-httproute-split.yaml", "expected-httproute-v1.yaml"):
        for obj in expected(name):
            assert object_errors(obj) == [], (name, obj)
    for obj in yaml.safe_load_all((GUIDE / "preview-stack.yaml").read_text()):
        assert object_errors(obj) == [], obj


def test_other_split_weights(plan: Plan) -> None:
    manifests = load_paths([str(GUIDE / "preview-stack.yaml")])
    tenth = plan_migration(manifests, Options(pool_names=OPTIONS.pool_names, v1_weight=10))
    weights = [r["weight"] for r in tenth.split_routes[0]["spec"]["rules"][0]["backendRefs"]]
    assert weights == [90, 10]
    assert tenth.final_routes == plan.final_routes


def test_without_renames_the_v1_pool_keeps_the_name_and_the_note_says_why(plan: Plan) -> None:
    same = plan_migration(load_paths([str(GUIDE / "preview-stack.yaml")]), Options())
    (pool,) = of_kind(same.resources, "InferencePool")
    assert pool["metadata"]["name"] == PREVIEW_POOL
    assert pool["spec"]["endpointPickerRef"]["name"] == f"{PREVIEW_POOL}-epp"
    (note,) = same.notes
    assert "--epp-service" in note and PREVIEW_POOL in note
    refs = same.split_routes[0]["spec"]["rules"][0]["backendRefs"]
    assert [(r["group"], r["name"]) for r in refs] == [
        ("inference.networking.x-k8s.io", PREVIEW_POOL),
        ("inference.networking.k8s.io", PREVIEW_POOL),
    ]
    assert plan.notes == []  # with --epp-service there is nothing to warn about
