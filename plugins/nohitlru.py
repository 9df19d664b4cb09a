"""`no-hit-lru-scorer`: spread cold requests (no cached prefix anywhere) over the least recently cold-hit pods.

A request is cold when no candidate holds any of its prefix blocks (or it has none). Warm requests score
0.5 everywhere. For a cold request over N candidates: those never sent a cold request rank first, in
candidate order (rank i scores 1 - i/(N-1)); then the others by how long ago they last got one, oldest
first (rank = never-used count + LRU position, oldest position 0, score max(0, 1 - rank/(N-1))); a lone
candidate scores 1. After a cold pick, the primary endpoint (and the prefill profile's, if any) move to
the most recent end of an LRU of lruSize endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from epp.datastore.table import Endpoint, EndpointTable, SlotArray
from epp.plugins.prefix import STATE_KEY, ApproxPrefixCacheProducer
from epp.scheduling.plugin import CycleState, Scorer, Scores, require_positive
from epp.scheduling.types import SchedulingResult, StateKey

#: the reference's prefix plugin type, and this build's producer of the match
_PREFIX_TYPES = ("prefix-cache-scorer", "approx-prefix-cache-producer")


@dataclass
class NoHitLRUParameters:
    lru_size: int = 1024
    #: the reference's way to name the prefix plugin whose match is read; here the match always comes from the
    #: config's one approx-prefix-cache-producer, so only the values that say so are accepted
    prefix_plugin_type: str = "prefix-cache-scorer"
    prefix_plugin_name: str = "prefix-cache-scorer"

    def validate(self) -> None:
        require_positive("lruSize", self.lru_size)
        if self.prefix_plugin_type not in _PREFIX_TYPES:
            raise ValueError(
                f"prefixPluginType {self.prefix_plugin_type!r}: the cold/warm decision reads the prefix match of the "
                f"approx-prefix-cache-producer; give {' or '.join(_PREFIX_TYPES)}, or omit it"
            )
        if self.prefix_plugin_name not in _PREFIX_TYPES:
            raise ValueError(
                f"prefixPluginName {self.prefix_plugin_name!r}: the match comes from the config's one "
                "approx-prefix-cache-producer whatever its name; omit prefixPluginName"
            )


class ColdLRU:
    """Slots in least-recently-used order, with each slot's position kept in a per-slot column (-1 = absent)."""

    def __init__(self, size: int, capacity: int) -> None:
        self.size = size
        self.order: npt.NDArray[np.intp] = np.empty(0, dtype=np.intp)
        self.position: npt.NDArray[np.int64] = np.full(capacity, -1, dtype=np.int64)

    def touch(self, slot: int) -> None:
        order = self.order
        if self.position[slot] >= 0:
            order = order[order != slot]
        order = np.append(order, np.intp(slot))
        if len(order) > self.size:
            self.position[order[: -self.size]] = -1
            order = order[-self.size :]
        self.position[order] = np.arange(len(order))
        self.order = order

    def forget(self, slot: int) -> None:
        if self.position[slot] < 0:
            return
        self.position[slot] = -1
        self.order = self.order[self.order != slot]
        self.position[self.order] = np.arange(len(self.order))


class NoHitLRUScorer(Scorer):
    type_name = "no-hit-lru-scorer"
    Parameters = NoHitLRUParameters
    consumes = ApproxPrefixCacheProducer.type_name

    def __init__(self, name: str, parameters: NoHitLRUParameters) -> None:
        super().__init__(name, parameters)
        self.lru = ColdLRU(parameters.lru_size, 0)
        self.table: EndpointTable | None = None
        self._cold_key: StateKey[bool] = StateKey(f"{self.type_name}/{name}/cold")

    def bind(self, table: EndpointTable) -> None:
        self.table = table
        self.lru = ColdLRU(self.lru.size, table.capacity)

        def on_change(kind: str, slot: int, endpoint: Endpoint) -> None:
            if kind == "remove":
                self.lru.forget(slot)

        table.subscribe(on_change)

    def score(self, state: CycleState, candidates: SlotArray) -> Scores:
        if state.table is not self.table:
            self.bind(state.table)
        match = state.read(STATE_KEY)
        cold = match is None or not match.total_blocks or not match.matched_blocks(candidates).any()
        state.write(self._cold_key, cold)
        count = len(candidates)
        if not cold:
            return np.full(count, 0.5)
        if count == 1:
            return np.ones(1)
        position = self.lru.position[candidates]
        never = position < 0
        never_rank = np.cumsum(never) - 1
        rank = np.where(never, never_rank, int(never.sum()) + position)
        result: Scores = np.maximum(1.0 - rank / (count - 1), 0.0)
        return result

    def pre_request(self, state: CycleState, result: SchedulingResult) -> None:
        if not state.read(self._cold_key):
            return
        primary = result.primary
        if len(primary):
            self.lru.touch(int(primary[0]))
        prefill = result.prefill
        if prefill is not None:
            self.lru.touch(int(prefill.slots[0]))
