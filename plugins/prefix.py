"""Approximate prefix-cache affinity: the `approx-prefix-cache-producer` and the `prefix-cache-scorer`.

The request's prompt bytes are cut into blocks of blockSizeTokens x 4 characters (a trailing partial
block too; shorter than one block → no hashes), at most maxPrefixBlocksToMatch blocks. Block hashes are
chained xxhash64: h0 = xxh64(target model ‖ cache_salt), h_i = xxh64(block_i ‖ LE64(h_{i-1})). The index
remembers which endpoints were sent which hashes (per-endpoint LRU of lruCapacityPerServer entries).
A match walks the hashes in order and stops at the first hash no endpoint holds; an endpoint's score is
the number of walked hashes it holds over the request's hash count.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import xxhash

from epp.datastore.table import Endpoint, EndpointTable, SlotArray
from epp.scheduling.plugin import CycleState, DataProducer, Scorer, Scores
from epp.scheduling.types import SchedulingResult

STATE_KEY = "prefix-cache-match"
_LE64 = struct.Struct("<Q")


@dataclass
class PrefixParameters:
    auto_tune: bool = True
    block_size_tokens: int = 16
    max_prefix_blocks_to_match: int = 256
    max_prefix_tokens_to_match: int = 0
    lru_capacity_per_server: int = 31250

    def validate(self) -> None:
        if self.block_size_tokens <= 0:
            raise ValueError(f"blockSizeTokens must be positive, got {self.block_size_tokens}")
        if self.max_prefix_blocks_to_match <= 0:
            raise ValueError(f"maxPrefixBlocksToMatch must be positive, got {self.max_prefix_blocks_to_match}")
        if self.lru_capacity_per_server <= 0:
            raise ValueError(f"lruCapacityPerServer must be positive, got {self.lru_capacity_per_server}")


def block_hashes(data: bytes, seed: bytes, block_chars: int, max_blocks: int) -> list[int]:
    if len(data) < block_chars:
        return []
    data = data[: block_chars * max_blocks]
    previous = xxhash.xxh64_intdigest(seed)
    hashes = []
    for start in range(0, len(data), block_chars):
        previous = xxhash.xxh64_intdigest(data[start : start + block_chars] + _LE64.pack(previous))
        hashes.append(previous)
    return hashes


class PrefixIndex:
    """hash → set of slots holding it; per slot an LRU of its hashes."""

    def __init__(self, capacity_per_slot: int) -> None:
        self.capacity = capacity_per_slot
        self.holders: dict[int, set[int]] = {}
        self.per_slot: dict[int, OrderedDict[int, None]] = {}

    def insert(self, slot: int, hashes: list[int], capacity: int | None = None) -> None:
        lru = self.per_slot.setdefault(slot, OrderedDict())
        limit = capacity or self.capacity
        for value in hashes:
            if value in lru:
                lru.move_to_end(value)
                continue
            lru[value] = None
            self.holders.setdefault(value, set()).add(slot)
        while len(lru) > limit:
            evicted, _ = lru.popitem(last=False)
            self._drop(evicted, slot)

    def forget(self, slot: int) -> None:
        for value in self.per_slot.pop(slot, {}):
            self._drop(value, slot)

    def _drop(self, value: int, slot: int) -> None:
        holders = self.holders.get(value)
        if holders is not None:
            holders.discard(slot)
            if not holders:
                del self.holders[value]

    def match(self, hashes: list[int]) -> dict[int, int]:
        counts: dict[int, int] = {}
        holders = self.holders
        for value in hashes:
            slots = holders.get(value)
            if not slots:
                break
            for slot in slots:
                counts[slot] = counts.get(slot, 0) + 1
        return counts

    def __len__(self) -> int:
        return sum(len(lru) for lru in self.per_slot.values())


@dataclass
class PrefixMatch:
    """What the producer found for one request; consumers use `hashes` and `matched_blocks` only."""

    hashes: list[int]
    counts: dict[int, int]

    def matched_blocks(self, candidates: SlotArray) -> np.ndarray:
        """Leading blocks of the request each candidate holds, aligned with `candidates`."""
        counts = self.counts
        if not counts:
            return np.zeros(len(candidates), np.int64)
        return np.fromiter((counts.get(s, 0) for s in candidates.tolist()), np.int64, len(candidates))


class ApproxPrefixCacheProducer(DataProducer):
    type_name = "approx-prefix-cache-producer"
    Parameters = PrefixParameters

    def __init__(self, name: str, parameters: PrefixParameters) -> None:
        super().__init__(name, parameters)
        self.parameters: PrefixParameters = parameters
        self.index = PrefixIndex(parameters.lru_capacity_per_server)

    def bind(self, table: EndpointTable) -> None:
        def on_change(kind: str, slot: int, endpoint: Endpoint) -> None:
            if kind == "remove":
                self.index.forget(slot)

        table.subscribe(on_change)

    def _block_tokens(self, state: CycleState, candidates: SlotArray) -> int:
        if self.parameters.auto_tune and len(candidates):
            served = int(state.table.cache_block_size[candidates[0]])
            if served > 0:
                return served
        return self.parameters.block_size_tokens

    def produce(self, state: CycleState, candidates: SlotArray) -> None:
        request = state.request
        tokens = self._block_tokens(state, candidates)
        max_blocks = self.parameters.max_prefix_blocks_to_match
        if self.parameters.max_prefix_tokens_to_match > 0:
            max_blocks = max(self.parameters.max_prefix_tokens_to_match // tokens, 1)
        seed = (request.target_model + request.cache_salt).encode()
        hashes = block_hashes(request.prompt_bytes, seed, tokens * 4, max_blocks)
        state.data[STATE_KEY] = PrefixMatch(hashes, self.index.match(hashes) if hashes else {})

    def pre_request(self, state: CycleState, result: SchedulingResult) -> None:
        match: PrefixMatch | None = state.data.get(STATE_KEY)
        if match is None or not match.hashes:
            return
        targets = [int(result.primary[0])]
        prefill = result.profile_results.get("prefill")
        if prefill is not None and len(prefill.slots):
            targets.append(int(prefill.slots[0]))
        for slot in targets:
            capacity = None
            if self.parameters.auto_tune and state.table.cache_num_blocks[slot] > 0:
                capacity = int(state.table.cache_num_blocks[slot])
            self.index.insert(slot, match.hashes, capacity)


class PrefixCacheScorer(Scorer):
    type_name = "prefix-cache-scorer"
    #: the producer this scorer consumes (auto-created with defaults when the config does not declare one)
    consumes = ApproxPrefixCacheProducer.type_name

    def score(self, state: CycleState, candidates: SlotArray) -> Scores:
        match: PrefixMatch | None = state.data.get(STATE_KEY)
        if match is None or not match.hashes or not match.counts:
            return np.zeros(len(candidates))
        return match.matched_blocks(candidates) / len(match.hashes)
