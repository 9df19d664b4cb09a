"""Model-name rewrites and objectives from their Kubernetes objects (pure: objects in, lookups out).

- InferenceModelRewrite (x-k8s v1alpha2): `spec.rules[{matches[{model{type: Exact, value}}], targets[{modelRewrite,
  weight}]}]`. A rule without matches is generic. Lookup: the exact rules that name the model, oldest object
  first (creationTimestamp, then name), before the generic rules, oldest first (reference §6.3).
- InferenceModel (x-k8s v1alpha2, the pre-v1 API): `spec.modelName`, `spec.criticality`
  (Critical → priority 2, Standard → 0, Sheddable → -1), `spec.targetModels[{name, weight}]`.
- InferenceObjective (x-k8s v1alpha2): `spec.priority` (unset → 0), selected by name.

Only objects whose `spec.poolRef` names this EPP's pool (name, and group when given) are used.
Weighted choice: a target of weight 0 gets nothing unless every weight is 0 (then uniform); targets the
caller reports as unable to serve are skipped while another target can serve.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("epp.k8s")

CRITICALITY_PRIORITY = {"Critical": 2, "Standard": 0, "Default": 0, "Sheddable": -1}
MAX_WEIGHT = 1_000_000


class RewriteSpecError(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    model: str
    weight: int


@dataclass(frozen=True)
class Rule:
    #: `metadata.name` of the object the rule came from (the metric's model_rewrite_name)
    source: str
    #: sort key: (creationTimestamp, name, rule index) — older wins
    age: tuple[str, str, int]
    #: models matched exactly; empty = a generic rule (matches every model)
    models: frozenset[str]
    targets: tuple[Target, ...]


@dataclass(frozen=True)
class PoolRef:
    name: str
    group: str


def refers_to_pool(obj: Mapping[str, Any], pool: PoolRef, default_group: str) -> bool:
    ref = (obj.get("spec") or {}).get("poolRef") or {}
    return bool(ref.get("name") == pool.name and (ref.get("group") or default_group) == pool.group)


def _age(obj: Mapping[str, Any], index: int) -> tuple[str, str, int]:
    metadata = obj.get("metadata") or {}
    return (str(metadata.get("creationTimestamp", "")), str(metadata.get("name", "")), index)


def _weight(value: Any, where: str) -> int:
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WEIGHT:
        raise RewriteSpecError(f"{where}: weight {value!r} must be an integer from 0 to {MAX_WEIGHT}")
    return value


def rewrite_rules(obj: Mapping[str, Any]) -> list[Rule]:
    """The rules of one InferenceModelRewrite; raises RewriteSpecError naming the bad field."""
    name = str((obj.get("metadata") or {}).get("name", ""))
    rules = (obj.get("spec") or {}).get("rules")
    if not isinstance(rules, list):
        raise RewriteSpecError(f"InferenceModelRewrite {name}: spec.rules must be a list")
    out = []
    for index, rule in enumerate(rules):
        where = f"InferenceModelRewrite {name}: spec.rules[{index}]"
        if not isinstance(rule, dict):
            raise RewriteSpecError(f"{where}: expected a mapping with matches and targets")
        models = set()
        for m, match in enumerate(rule.get("matches") or []):
            model = (match or {}).get("model") if isinstance(match, dict) else None
            if not isinstance(model, dict) or not isinstance(model.get("value"), str):
                raise RewriteSpecError(f"{where}.matches[{m}]: expected model: {{type: Exact, value: NAME}}")
            if model.get("type", "Exact") != "Exact":
                raise RewriteSpecError(f"{where}.matches[{m}].model.type {model.get('type')!r}: only Exact is defined")
            models.add(model["value"])
        targets = []
        for t, target in enumerate(rule.get("targets") or []):
            if not isinstance(target, dict) or not isinstance(target.get("modelRewrite"), str):
                raise RewriteSpecError(f"{where}.targets[{t}]: expected {{modelRewrite: NAME, weight: N}}")
            targets.append(Target(target["modelRewrite"], _weight(target.get("weight"), f"{where}.targets[{t}]")))
        if not targets:
            raise RewriteSpecError(f"{where}: targets must name at least one modelRewrite")
        out.append(Rule(name, _age(obj, index), frozenset(models), tuple(targets)))
    return out


def inference_model(obj: Mapping[str, Any]) -> tuple[str, int, Rule | None]:
    """(modelName, priority, rule for targetModels or None) of a v1alpha2 InferenceModel."""
    name = str((obj.get("metadata") or {}).get("name", ""))
    spec = obj.get("spec") or {}
    model = spec.get("modelName")
    if not isinstance(model, str) or not model:
        raise RewriteSpecError(f"InferenceModel {name}: spec.modelName is required")
    criticality = spec.get("criticality") or "Standard"
    if criticality not in CRITICALITY_PRIORITY:
        raise RewriteSpecError(
            f"InferenceModel {name}: spec.criticality {criticality!r}; use Critical, Standard or Sheddable"
        )
    targets = []
    for t, target in enumerate(spec.get("targetModels") or []):
        if not isinstance(target, dict) or not isinstance(target.get("name"), str):
            raise RewriteSpecError(f"InferenceModel {name}: spec.targetModels[{t}] needs a name")
        targets.append(
            Target(target["name"], _weight(target.get("weight"), f"InferenceModel {name}: targetModels[{t}]"))
        )
    rule = Rule(name, _age(obj, 0), frozenset([model]), tuple(targets)) if targets else None
    return model, CRITICALITY_PRIORITY[criticality], rule


def objective_priority(obj: Mapping[str, Any]) -> int:
    name = str((obj.get("metadata") or {}).get("name", ""))
    priority = (obj.get("spec") or {}).get("priority")
    if priority is None:
        return 0
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise RewriteSpecError(f"InferenceObjective {name}: spec.priority {priority!r} must be an integer")
    return priority


class RewriteTable:
    """Rules indexed for lookup by the incoming model name."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        ordered = sorted(rules, key=lambda r: r.age)
        self.exact: dict[str, Rule] = {}
        self.generic: Rule | None = None
        for rule in ordered:
            if rule.models:
                for model in rule.models:
                    self.exact.setdefault(model, rule)
            elif self.generic is None:
                self.generic = rule

    def lookup(self, model: str) -> Rule | None:
        return self.exact.get(model) or self.generic

    def __bool__(self) -> bool:
        return bool(self.exact) or self.generic is not None


def choose(
    targets: tuple[Target, ...], rng: random.Random, can_serve: Callable[[str], bool] | None = None
) -> tuple[Target, tuple[Target, ...]]:
    """Weighted random target, and the targets skipped because they cannot serve."""
    weighted = tuple(t for t in targets if t.weight > 0) or targets
    skipped: tuple[Target, ...] = ()
    if can_serve is not None and len(weighted) > 1:
        usable = tuple(t for t in weighted if can_serve(t.model))
        if usable and len(usable) < len(weighted):
            skipped = tuple(t for t in weighted if t not in usable)
            weighted = usable
    total = sum(t.weight for t in weighted)
    if total == 0:
        return weighted[rng.randrange(len(weighted))], skipped
    point = rng.randrange(total)
    for target in weighted:
        point -= target.weight
        if point < 0:
            return target, skipped
    return weighted[-1], skipped
