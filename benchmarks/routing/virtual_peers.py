"""The peer routers' policies as schedulers for the virtual fleet, written from their documented behaviour
(sglang-router / vllm-router `cache_aware`, `round_robin`, `random`; ../shared/reference/serving-landscape.md
sections 2.1 and 2.2) so they can be compared with epp over many seeds and fleet shapes. The real binaries are measured
through real sockets by run.py; these stand-ins only see what those routers see: the request text and their own
count of requests in flight per worker.

`cache_aware` (defaults of both routers' CLIs: --cache-threshold 0.3, --balance-abs-threshold 64,
--balance-rel-threshold 1.5, --max-tree-size 32 Mi characters, far above what these runs insert):
1. if max(load) - min(load) > 64 and max(load) > 1.5 x min(load): the least-loaded worker;
2. else the longest match of the request text in the tree of what was routed: if it covers more than 0.3 of
   the text, the worker that holds it; otherwise the least-loaded worker;
3. the text is inserted under the chosen worker.
The tree is kept at a granularity of CHUNK characters (a radix tree matches to the character; a chunk of 16 is
4 of the simulator's tokens). Ties between equally loaded workers are broken at random, and among several
holders of the longest match the least loaded wins: the kinder reading where the documentation is silent.
"""

from __future__ import annotations

import random

import numpy as np

from epp.datastore.table import EndpointTable, SlotArray
from epp.scheduling.types import LLMRequest, ProfileResult, SchedulingResult

CHUNK = 16
CACHE_THRESHOLD = 0.3
BALANCE_ABS = 64
BALANCE_REL = 1.5


def _one(slot: int) -> SchedulingResult:
    return SchedulingResult({"default": ProfileResult(np.array([slot], dtype=np.int64))}, "default")


class RoundRobin:
    """The candidates in turn."""

    def __init__(self) -> None:
        self.turn = 0

    def schedule(self, request: LLMRequest, table: EndpointTable, candidates: SlotArray) -> SchedulingResult:
        self.turn += 1
        return _one(int(candidates[self.turn % len(candidates)]))


class Random:
    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)

    def schedule(self, request: LLMRequest, table: EndpointTable, candidates: SlotArray) -> SchedulingResult:
        return _one(int(self.rng.choice(list(candidates))))


class CacheAware:
    """The cache_aware policy of sglang-router and vllm-router, on the router's own in-flight counts."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        #: chained hash of the text up to a chunk boundary -> workers that were sent a text with that prefix
        self.tree: dict[int, set[int]] = {}

    def _least_loaded(self, load: dict[int, float], among: list[int]) -> int:
        low = min(load[s] for s in among)
        return self.rng.choice([s for s in among if load[s] == low])

    def schedule(self, request: LLMRequest, table: EndpointTable, candidates: SlotArray) -> SchedulingResult:
        slots = [int(s) for s in candidates]
        load = {s: float(table.inflight_requests[s]) for s in slots}
        high, low = max(load.values()), min(load.values())
        text = request.prompt_bytes
        keys = []
        h = 0
        for start in range(0, len(text) - CHUNK + 1, CHUNK):
            h = hash((h, text[start : start + CHUNK]))
            keys.append(h)
        if high - low > BALANCE_ABS and high > low * BALANCE_REL:
            chosen = self._least_loaded(load, slots)
        else:
            depth = 0
            holders: list[int] = []
            for i, key in enumerate(keys):
                found = [s for s in self.tree.get(key, ()) if s in load]
                if not found:
                    break
                depth, holders = i + 1, found
            if holders and depth * CHUNK > CACHE_THRESHOLD * max(len(text), 1):
                chosen = self._least_loaded(load, holders)
            else:
                chosen = self._least_loaded(load, slots)
        for key in keys:
            self.tree.setdefault(key, set()).add(chosen)
        return _one(chosen)


PEER_POLICIES = {"round-robin": RoundRobin, "random": Random, "cache-aware": CacheAware}
