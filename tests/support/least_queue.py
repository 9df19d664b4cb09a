"""Least-queue pick: a scheduler without a configuration, for tests and benchmarks of the layers around the scheduler.

Score = waiting queue (scraped) + requests this EPP has in flight to the endpoint; lowest wins, ties
broken uniformly at random. Columnar: one gather per column and one argmin over the candidate slots.
"""

from __future__ import annotations

import random

import numpy as np

from epp.datastore.table import EndpointTable, SlotArray
from epp.scheduling.types import LLMRequest, ProfileResult, SchedulingError, SchedulingResult


class LeastQueueScheduler:
    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def schedule(self, request: LLMRequest, table: EndpointTable, candidates: SlotArray) -> SchedulingResult:
        if len(candidates) == 0:
            raise SchedulingError("no candidates")
        load = table.waiting_queue.take(candidates)
        load += table.inflight_requests.take(candidates)
        best = int(load.argmin())
        ties = np.flatnonzero(load == load[best])
        if len(ties) > 1:
            best = int(ties[self._rng.randrange(len(ties))])
        slots = candidates[best : best + 1]
        return SchedulingResult({"default": ProfileResult(slots)}, "default")
