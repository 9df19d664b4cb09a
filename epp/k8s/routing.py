"""The director's model routing in Kubernetes mode: rewrites (InferenceModelRewrite, then v1alpha2
InferenceModel targetModels), InferenceModel priorities, canary health, and candidates by served model.

Canary health: a rule's target "can serve" when at least one present endpoint known to serve that model
(see served.py) has metrics fresher than the staleness threshold. When no present endpoint is known to
serve it but others' models are known, its endpoints are gone (unready or deleted): it cannot serve. While
another target of the rule can serve, a target that cannot gets no traffic; the change is logged and
exported as `inference_extension_model_rewrite_target_unavailable{model_rewrite_name, target_model}`.
"""

from __future__ import annotations

import logging
import random
import time

import numpy as np

from epp.datalayer.staleness import fresh_mask
from epp.datastore.table import EndpointTable, SlotArray
from epp.k8s.rewrites import RewriteTable, Rule, Target, choose
from epp.k8s.served import ServedModels
from epp.observability.extension import record_model_rewrite, set_rewrite_target_unavailable

log = logging.getLogger("epp.k8s")


class ModelRouting:
    def __init__(
        self,
        table: EndpointTable,
        served: ServedModels | None = None,
        staleness_s: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self.table = table
        self.served = served
        self.staleness_s = staleness_s
        self.rewrites = RewriteTable([])
        self.models = RewriteTable([])
        self.priorities: dict[str, int] = {}
        self._rng = rng or random.Random()
        #: (rule source, target model) pairs that are currently skipped
        self._unavailable: set[tuple[str, str]] = set()

    def update(self, rewrite_rules: list[Rule], model_rules: list[Rule], priorities: dict[str, int]) -> None:
        """New rule sets (from InferenceModelRewrite and InferenceModel objects); swapped in atomically."""
        self.rewrites, self.models, self.priorities = RewriteTable(rewrite_rules), RewriteTable(model_rules), priorities

    # --- the director's protocol -------------------------------------------------------------

    def rewrite(self, model: str) -> tuple[str, str] | None:
        rule = self.rewrites.lookup(model) or self.models.lookup(model)
        if rule is None:
            return None
        target, skipped = choose(rule.targets, self._rng, self.can_serve if len(rule.targets) > 1 else None)
        if len(rule.targets) > 1:
            self._note(rule, skipped)
        record_model_rewrite(rule.source, model, target.model)
        return target.model, rule.source

    def model_priority(self, model: str) -> int | None:
        return self.priorities.get(model)

    def restrict(self, target_model: str, candidates: SlotArray) -> SlotArray:
        """The candidates known to serve the target model; all of them when no endpoint is known to."""
        if self.served is None:
            return candidates
        slots = self.served.slots_serving(target_model)
        if slots is None or len(slots) == len(self.table):
            return candidates
        return np.intersect1d(candidates, slots, assume_unique=True)

    # --- canary health -----------------------------------------------------------------------

    def can_serve(self, model: str) -> bool:
        slots: SlotArray | None = None
        if self.served is not None:
            slots = self.served.slots_serving(model)
            if slots is None and self.served.any_known():
                return False
        if slots is None:
            slots = self.table.live_slots()
        if len(slots) == 0:
            return False
        return bool(fresh_mask(self.table, slots, self.staleness_s, time.monotonic()).any())

    def _note(self, rule: Rule, skipped: tuple[Target, ...]) -> None:
        names = {t.model for t in skipped}
        for target in rule.targets:
            key = (rule.source, target.model)
            down = target.model in names
            if down == (key in self._unavailable):
                continue
            if down:
                self._unavailable.add(key)
                log.warning(
                    "model rewrite %s: target %s gets no traffic: none of its endpoints is ready with fresh metrics "
                    "(staleness threshold %.1fs); sending its share to the other targets",
                    rule.source,
                    target.model,
                    self.staleness_s,
                )
            else:
                self._unavailable.discard(key)
                log.info("model rewrite %s: target %s can serve again; weights apply", rule.source, target.model)
            set_rewrite_target_unavailable(rule.source, target.model, down)
