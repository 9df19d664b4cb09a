"""Least-queue pick used until an EndpointPickerConfig-driven scheduler is configured.

Score = waiting queue (scraped) + requests this EPP has in flight to the endpoint; lowest wins, ties
broken uniformly at random. Columnar: one gather and one argmin over the candidate slots.
"""

from __future__ import annotations

import numpy as np

from epp.datastore.table import EndpointTable, SlotArray
from epp.scheduling.types import LLMRequest, ProfileResult, SchedulingError, SchedulingResult


class LeastQueueScheduler:
    def __init__(self, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(seed)

    def schedule(self, request: LLMRequest, table: EndpointTable, candidates: SlotArray) -> SchedulingResult:
        if len(candidates) == 0:
            raise SchedulingError("no candidates")
        load = table.waiting_queue[candidates] + table.inflight_requests[candidates]
        best = np.flatnonzero(load == load.min())
        choice = best[0] if len(best) == 1 else best[self._rng.integers(len(best))]
        slots = candidates[choice : choice + 1]
        return SchedulingResult({"default": ProfileResult(slots)}, "default")
