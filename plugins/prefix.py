"""Approximate prefix-cache affinity: the `approx-prefix-cache-producer` and the `prefix-cache-scorer`.

The request's prompt bytes are cut into blocks of blockSizeTokens x 4 characters (a trailing partial
block too; shorter than one block → no hashes), at most maxPrefixBlocksToMatch blocks. Block hashes are
chained xxhash64: h0 = xxh64(target model ‖ cache_salt), h_i = xxh64(block_i, seed=h_{i-1}) (the reference
appends LE64(h_{i-1}) to the block instead; seeding chains the same way without copying each block). The index
remembers which endpoints were sent which hashes (per-endpoint LRU of lruCapacityPerServer entries).
A match walks the hashes in order and stops at the first hash no endpoint holds; an endpoint's score is
the number of walked hashes it holds over the request's hash count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import xxhash

from epp.datastore.table import Endpoint, EndpointTable, SlotArray
from epp.observability.extension import record_prefix_match, set_prefix_indexer_size
from epp.scheduling.plugin import CycleState, DataProducer, Scorer, Scores
from epp.scheduling.types import SchedulingResult
from plugins.prefix_index import Keys, PrefixIndex, as_keys

STATE_KEY = "prefix-cache-match"
_NO_KEYS: Keys = np.empty(0, dtype=np.uint64)
_NO_COUNTS: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)


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
    view = memoryview(data)[: block_chars * max_blocks]
    digest = xxhash.xxh64_intdigest
    previous = digest(seed)
    hashes: list[int] = []
    append = hashes.append
    for start in range(0, len(view), block_chars):
        previous = digest(view[start : start + block_chars], previous)
        append(previous)
    return hashes


@dataclass
class PrefixMatch:
    """What the producer found for one request; consumers use `hashes` and `matched_blocks` only."""

    hashes: list[int]
    keys: Keys
    #: walked blocks held, indexed by slot; slots past its end hold none
    by_slot: npt.NDArray[np.int64]
    block_bytes: int = 0

    def matched_blocks(self, candidates: SlotArray) -> npt.NDArray[np.int64]:
        """Blocks of the request each candidate holds (walked greedily), aligned with `candidates`."""
        by_slot = self.by_slot
        if not len(by_slot) or not len(candidates):
            return np.zeros(len(candidates), np.int64)
        if candidates.max() < len(by_slot):
            return by_slot[candidates]
        inside = candidates < len(by_slot)
        return np.where(inside, by_slot[np.where(inside, candidates, 0)], 0)


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
        if not hashes:
            state.data[STATE_KEY] = PrefixMatch(hashes, _NO_KEYS, _NO_COUNTS)
            return
        keys = as_keys(hashes)
        state.data[STATE_KEY] = PrefixMatch(hashes, keys, self.index.match_by_slot(keys), tokens * 4)

    def pre_request(self, state: CycleState, result: SchedulingResult) -> None:
        match: PrefixMatch | None = state.data.get(STATE_KEY)
        if match is None or not match.hashes:
            return
        targets = [int(result.primary[0])]
        primary = int(result.primary[0])
        matched = int(match.by_slot[primary]) if primary < len(match.by_slot) else 0
        record_prefix_match(matched * match.block_bytes, len(match.hashes) * match.block_bytes)
        prefill = result.profile_results.get("prefill")
        if prefill is not None and len(prefill.slots):
            targets.append(int(prefill.slots[0]))
        for slot in targets:
            capacity = None
            if self.parameters.auto_tune and state.table.cache_num_blocks[slot] > 0:
                capacity = int(state.table.cache_num_blocks[slot])
            self.index.insert(slot, match.keys, capacity)
        set_prefix_indexer_size(len(self.index))


class PrefixCacheScorer(Scorer):
    type_name = "prefix-cache-scorer"
    #: the producer this scorer consumes (auto-created with defaults when the config does not declare one)
    consumes = ApproxPrefixCacheProducer.type_name

    def score(self, state: CycleState, candidates: SlotArray) -> Scores:
        match: PrefixMatch | None = state.data.get(STATE_KEY)
        if match is None or not match.hashes or not len(match.by_slot):
            return np.zeros(len(candidates))
        return match.matched_blocks(candidates) / len(match.hashes)
