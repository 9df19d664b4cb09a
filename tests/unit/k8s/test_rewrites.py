"""InferenceModelRewrite / InferenceModel / InferenceObjective parsing, rule precedence and the weighted
choice, whose split is checked against binomial bounds."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import pytest

from epp.k8s.pool import GROUP_V1, GROUP_V1ALPHA2
from epp.k8s.rewrites import (
    PoolRef,
    RewriteSpecError,
    RewriteTable,
    Target,
    choose,
    inference_model,
    objective_priority,
    refers_to_pool,
    rewrite_rules,
)


def rewrite(name: str, created: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created}, "spec": {"rules": rules}}


def rule(models: list[str], targets: list[tuple[str, int]]) -> dict[str, Any]:
    return {
        "matches": [{"model": {"type": "Exact", "value": m}} for m in models],
        "targets": [{"modelRewrite": t, "weight": w} for t, w in targets],
    }


def test_rules_of_one_object() -> None:
    rules = rewrite_rules(rewrite("r", "2026-01-01T00:00:00Z", [rule(["a", "b"], [("a-v2", 3)]), rule([], [("x", 1)])]))
    assert rules[0].models == frozenset({"a", "b"})
    assert rules[0].targets == (Target("a-v2", 3),)
    assert rules[1].models == frozenset()  # generic
    assert rules[0].source == "r"


@pytest.mark.parametrize(
    ("spec_rules", "message"),
    [
        ([{"matches": [{"model": {"type": "Prefix", "value": "a"}}], "targets": [{"modelRewrite": "b"}]}], "Exact"),
        ([{"matches": [], "targets": []}], "at least one"),
        ([rule(["a"], [("b", -1)])], "weight -1"),
        ([rule(["a"], [("b", 1_000_001)])], "weight 1000001"),
        ([{"targets": [{"weight": 1}]}], r"targets\[0\]"),
    ],
)
def test_rule_errors_name_the_path(spec_rules: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(RewriteSpecError, match=message):
        rewrite_rules(rewrite("bad", "", spec_rules))


def test_exact_rules_beat_generic_and_the_oldest_object_wins() -> None:
    old = rewrite_rules(rewrite("old", "2026-01-01T00:00:00Z", [rule(["m"], [("from-old", 1)])]))
    new = rewrite_rules(rewrite("new", "2026-02-01T00:00:00Z", [rule(["m", "n"], [("from-new", 1)])]))
    generic_old = rewrite_rules(rewrite("g1", "2025-01-01T00:00:00Z", [rule([], [("generic-old", 1)])]))
    generic_new = rewrite_rules(rewrite("g2", "2026-03-01T00:00:00Z", [rule([], [("generic-new", 1)])]))
    table = RewriteTable(new + generic_new + old + generic_old)
    assert table.lookup("m") is not None and table.lookup("m").targets[0].model == "from-old"  # type: ignore[union-attr]
    assert table.lookup("n").targets[0].model == "from-new"  # type: ignore[union-attr]
    assert table.lookup("other").targets[0].model == "generic-old"  # type: ignore[union-attr]
    assert RewriteTable([]).lookup("m") is None


def test_inference_model_criticality_and_target_models() -> None:
    obj = {
        "metadata": {"name": "food-review"},
        "spec": {
            "modelName": "food-review",
            "criticality": "Critical",
            "targetModels": [{"name": "food-review-1", "weight": 90}, {"name": "food-review-2", "weight": 10}],
        },
    }
    model, priority, found = inference_model(obj)
    assert (model, priority) == ("food-review", 2)
    assert found is not None and found.targets == (Target("food-review-1", 90), Target("food-review-2", 10))
    assert inference_model({"metadata": {"name": "s"}, "spec": {"modelName": "s", "criticality": "Sheddable"}})[1:] == (
        -1,
        None,
    )
    assert inference_model({"metadata": {"name": "d"}, "spec": {"modelName": "d"}})[1] == 0
    with pytest.raises(RewriteSpecError, match="Critical, Standard or Sheddable"):
        inference_model({"metadata": {"name": "x"}, "spec": {"modelName": "x", "criticality": "Urgent"}})


def test_objective_priority() -> None:
    assert objective_priority({"metadata": {"name": "o"}, "spec": {"priority": 4}}) == 4
    assert objective_priority({"metadata": {"name": "o"}, "spec": {}}) == 0
    with pytest.raises(RewriteSpecError, match="integer"):
        objective_priority({"metadata": {"name": "o"}, "spec": {"priority": "high"}})


def test_pool_reference_defaults_to_the_kind_s_group() -> None:
    ga = PoolRef("pool", GROUP_V1)
    assert refers_to_pool({"spec": {"poolRef": {"name": "pool"}}}, ga, GROUP_V1)
    assert not refers_to_pool({"spec": {"poolRef": {"name": "pool"}}}, ga, GROUP_V1ALPHA2)
    assert not refers_to_pool({"spec": {"poolRef": {"name": "other", "group": GROUP_V1}}}, ga, GROUP_V1)


def within_binomial(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("weights", [(90, 10), (1, 1), (70, 20, 10), (999_999, 1)])
def test_weighted_choice_within_binomial_bounds(weights: tuple[int, ...]) -> None:
    targets = tuple(Target(f"t{i}", w) for i, w in enumerate(weights))
    rng = random.Random(1234)
    n = 20_000
    counts = Counter(choose(targets, rng)[0].model for _ in range(n))
    total = sum(weights)
    for i, weight in enumerate(weights):
        assert within_binomial(counts[f"t{i}"], n, weight / total), (weights, counts)


def test_weight_zero_gets_nothing_unless_all_are_zero() -> None:
    rng = random.Random(7)
    rollback = (Target("v1", 100), Target("v2", 0))
    assert {choose(rollback, rng)[0].model for _ in range(2000)} == {"v1"}
    uniform = (Target("a", 0), Target("b", 0))
    counts = Counter(choose(uniform, rng)[0].model for _ in range(4000))
    assert within_binomial(counts["a"], 4000, 0.5)


def test_a_target_that_cannot_serve_is_skipped_while_another_can() -> None:
    rng = random.Random(3)
    canary = (Target("v1", 90), Target("v2", 10))
    picks = [choose(canary, rng, lambda m: m != "v2") for _ in range(1000)]
    assert {target.model for target, _ in picks} == {"v1"}
    assert all(skipped == (Target("v2", 10),) for _, skipped in picks)
    # when nothing can serve, the configured split stands and nothing is reported skipped
    counts = Counter(choose(canary, rng, lambda m: False)[0].model for _ in range(5000))
    assert within_binomial(counts["v2"], 5000, 0.1)
    # a rolled-back target (weight 0) is not brought back because the others cannot serve
    assert {choose((Target("v1", 1), Target("v2", 0)), rng, lambda m: m == "v2")[0].model for _ in range(200)} == {"v1"}
