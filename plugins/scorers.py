"""Load and affinity scorers with the reference's formulas; each returns one score in [0, 1] per candidate.

The load scorers read the scraped signals corrected by what was routed and finished since the scrape
(epp.datastore.fresh), so decisions between scrapes see the load they just created."""

from __future__ import annotations

import numpy as np

from epp.datastore.fresh import cached_fresh_load
from epp.datastore.table import SlotArray
from epp.scheduling.plugin import CycleState, Scorer, Scores


def _min_max_inverted(values: Scores) -> Scores:
    """(max - v) / (max - min); all equal → 1.0 (reference queue-scorer normalisation)."""
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.ones(len(values), dtype=np.float64)
    result: Scores = np.subtract(high, values, out=values)  # `values` is the scorer's own copy (take)
    result /= high - low
    return result


class QueueScorer(Scorer):
    type_name = "queue-scorer"
    bounded = True

    def score(self, state: CycleState, candidates: SlotArray) -> Scores:
        return _min_max_inverted(cached_fresh_load(state, candidates).waiting.copy())


class RunningRequestsSizeScorer(Scorer):
    type_name = "running-requests-size-scorer"
    bounded = True

    def score(self, state: CycleState, candidates: SlotArray) -> Scores:
        return _min_max_inverted(cached_fresh_load(state, candidates).running.copy())


class KVCacheUtilizationScorer(Scorer):
    type_name = "kv-cache-utilization-scorer"

    def score(self, state: CycleState, candidates: SlotArray) -> Scores:
        return 1.0 - cached_fresh_load(state, candidates).kv_usage


class LoraAffinityScorer(Scorer):
    """1.0 adapter active; 0.8 room for another adapter; 0.6 adapter waiting; else 0 (target model = adapter)."""

    type_name = "lora-affinity-scorer"
    bounded = True

    def score(self, state: CycleState, candidates: SlotArray) -> Scores:
        table = state.table
        scores = np.zeros(len(candidates))
        if table.lora_generation == 0:
            return scores  # no server has reported LoRA state: every candidate scores 0
        adapter = state.request.target_model
        waiting = table.lora_waiting_mask(adapter)
        if waiting is not None:
            scores[waiting[candidates]] = 0.6
        scores[table.lora_loaded[candidates] < table.max_lora[candidates]] = 0.8
        active = table.lora_active_mask(adapter)
        if active is not None:
            scores[active[candidates]] = 1.0
        return scores
