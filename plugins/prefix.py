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

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import xxhash

from epp.datastore.table import Endpoint, EndpointTable, SlotArray
from epp.observability.extension import record_prefix_match, set_prefix_indexer_size
from epp.plugins.prefix_index import Keys, Positions, PrefixIndex, Walk, as_keys
from epp.scheduling.plugin import CycleState, DataProducer, Scorer, Scores, require_positive
from epp.scheduling.types import SchedulingResult, StateKey

STATE_KEY: StateKey[PrefixMatch] = StateKey("prefix-cache-match")
_NO_COUNTS: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)


@dataclass
class PrefixParameters:
    auto_tune: bool = True
    block_size_tokens: int = 16
    max_prefix_blocks_to_match: int = 256
    max_prefix_tokens_to_match: int = 0
    lru_capacity_per_server: int = 31250

    def validate(self) -> None:
        require_positive("blockSizeTokens", self.block_size_tokens)
        require_positive("maxPrefixBlocksToMatch", self.max_prefix_blocks_to_match)
        require_positive("lruCapacityPerServer", self.lru_capacity_per_server)


#: blocks hashed before the first index walk; more (WALK_GROWTH times as many so far) are hashed and walked
#: for the decision only while every block so far is held, so a prompt that leaves the cached prefix early
#: costs a few hashes, not all of them; the rest are hashed after the pick, when the index learns them
FIRST_WALK_BLOCKS = 16
WALK_GROWTH = 4


def block_count(length: int, block_chars: int, max_blocks: int) -> int:
    """Blocks of a prompt of `length` bytes: a trailing partial block counts; shorter than one block → 0."""
    if length < block_chars:
        return 0
    return min(-(-length // block_chars), max_blocks)


def chain_hashes(data: bytes, previous: int, block_chars: int, start: int, stop: int) -> list[int]:
    """Hashes of blocks [start, stop), chained from `previous` (the hash of block start-1, or the seed's)."""
    view = memoryview(data)
    digest = xxhash.xxh64_intdigest
    hashes: list[int] = []
    append = hashes.append
    for offset in range(start * block_chars, stop * block_chars, block_chars):
        previous = digest(view[offset : offset + block_chars], previous)
        append(previous)
    return hashes


def block_hashes(data: bytes, seed: bytes, block_chars: int, max_blocks: int) -> list[int]:
    """Every block hash of a prompt (the producer computes them in two steps, see FIRST_WALK_BLOCKS)."""
    count = block_count(len(data), block_chars, max_blocks)
    return chain_hashes(data, xxhash.xxh64_intdigest(seed), block_chars, 0, count)


class PrefixMatch:
    """What the producer found for one request; consumers use `total_blocks` and `matched_blocks` only."""

    __slots__ = ("_data", "_hashes", "_keys", "block_bytes", "by_slot", "total_blocks", "walks")

    def __init__(
        self,
        total_blocks: int,
        by_slot: npt.NDArray[np.int64],
        block_bytes: int,
        data: bytes,
        hashes: list[int],
        walks: list[tuple[int, Walk]],
    ) -> None:
        #: the request's block count (the denominator of every prefix score)
        self.total_blocks = total_blocks
        #: walked blocks held, indexed by slot: empty (none held) or covering every slot of the table
        self.by_slot = by_slot
        self.block_bytes = block_bytes
        self._data = data
        self._hashes = hashes
        self._keys: Keys | None = None
        #: the index walks of the decision: (first block, what the walk found)
        self.walks = walks

    def matched_blocks(self, candidates: SlotArray) -> npt.NDArray[np.int64]:
        """Blocks of the request each candidate holds (walked greedily), aligned with `candidates`."""
        if not len(self.by_slot):
            return np.zeros(len(candidates), np.int64)
        return self.by_slot[candidates]

    def seen_entries(self) -> tuple[Positions, Positions]:
        """(block, table position) of the index entries the walks met, for the insert after the pick."""
        if len(self.walks) == 1 and self.walks[0][0] == 0:
            return self.walks[0][1].entries()
        rows, positions = [], []
        for start, walk in self.walks:
            walk_rows, walk_positions = walk.entries()
            rows.append(walk_rows + start)
            positions.append(walk_positions)
        return np.concatenate(rows), np.concatenate(positions)

    def known_hashes(self) -> list[int]:
        """The hashes of the request's first blocks computed so far (at least the first walk's, more while every
        block so far is held somewhere)."""
        return self._hashes

    def hashes(self) -> list[int]:
        """Every block's hash, hashing the blocks the decision did not need."""
        hashes = self._hashes
        done = len(hashes)
        if done < self.total_blocks:
            hashes += chain_hashes(self._data, hashes[-1], self.block_bytes, done, self.total_blocks)
        return hashes

    def keys(self) -> Keys:
        """Every block's index key."""
        if self._keys is None:
            self._keys = as_keys(self.hashes())
        return self._keys


_NO_MATCH = PrefixMatch(0, _NO_COUNTS, 0, b"", [], [])


class _SeedCache:
    """h0 = xxh64(target model ‖ cache salt), remembered for the last few hundred pairs."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._seeds: dict[tuple[str, str], int] = {}

    def get(self, model: str, salt: str) -> int:
        key = (model, salt)
        seed = self._seeds.get(key)
        if seed is None:
            if len(self._seeds) >= self.size:
                self._seeds.clear()
            seed = self._seeds[key] = xxhash.xxh64_intdigest((model + salt).encode())
        return seed


class _RecentPrompts:
    """Prompts hashed lately, keyed by their first block's hash, with all their block hashes: a prompt that
    repeats the start of one (a conversation's next turn, a shared system prompt) hashes only the blocks
    after the bytes they share. Bounded by the prompt bytes it keeps; the oldest entries go first."""

    def __init__(self, max_bytes: int = 8 << 20) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[int, tuple[bytes, int, list[int]]] = OrderedDict()

    def shared_hashes(self, first: int, data: bytes, block_chars: int, least: int) -> list[int]:
        """Hashes of the leading full blocks `data` shares byte for byte with the prompt remembered under
        `first`, when there are at least `least` of them (hashing fewer costs less than finding them)."""
        entry = self._entries.get(first)
        if entry is None or entry[1] != block_chars:
            return []
        old, _, hashes = entry
        blocks = min(len(old), len(data)) // block_chars
        blocks = min(blocks, len(hashes))
        if blocks < least:
            return []
        edge = slice((least - 1) * block_chars, least * block_chars)
        if data[edge] != old[edge]:  # cheap early out: they part before `least` blocks (usually)
            return []
        if data[: blocks * block_chars] != old[: blocks * block_chars]:
            if data[: least * block_chars] != old[: least * block_chars]:
                return []
            low, high = least, blocks - 1  # find the last shared block
            while low < high:
                middle = (low + high + 1) // 2
                if data[: middle * block_chars] == old[: middle * block_chars]:
                    low = middle
                else:
                    high = middle - 1
            blocks = low
        return hashes[:blocks]

    def remember(self, data: bytes, block_chars: int, hashes: list[int]) -> None:
        if len(hashes) < 2 or len(data) > self.max_bytes:
            return
        entries = self._entries
        previous = entries.get(hashes[0])
        if previous is not None and previous[1] == block_chars and previous[0] == data:
            entries.move_to_end(hashes[0])  # the same prompt again (its hashes are the same too): now the newest
            return
        previous = entries.pop(hashes[0], None)
        if previous is not None:
            self.bytes -= len(previous[0])
        entries[hashes[0]] = (data, block_chars, hashes)
        self.bytes += len(data)
        while self.bytes > self.max_bytes:
            self.bytes -= len(entries.popitem(last=False)[1][0])


class ApproxPrefixCacheProducer(DataProducer):
    type_name = "approx-prefix-cache-producer"
    Parameters = PrefixParameters

    def __init__(self, name: str, parameters: PrefixParameters) -> None:
        super().__init__(name, parameters)
        self.parameters: PrefixParameters = parameters
        self.index = PrefixIndex(parameters.lru_capacity_per_server)
        self._seeds = _SeedCache()
        self._recent = _RecentPrompts()
        self.table: EndpointTable | None = None
        #: with --shared-state: hands (slots, keys) of every insert to the other replicas (see epp.shared)
        self.replicate: Callable[[Sequence[int], Keys], None] | None = None

    def bind(self, table: EndpointTable) -> None:
        self.table = table

        def on_change(kind: str, slot: int, endpoint: Endpoint) -> None:
            if kind == "remove":
                self.index.forget(slot)

        table.subscribe(on_change)

    def blocks_held(self, slot: int) -> int:
        """Prefix blocks the index believes the endpoint in `slot` holds (for /debug/endpoints)."""
        return self.index.slot_size(slot)

    def _block_tokens(self, state: CycleState, candidates: SlotArray) -> int:
        if self.parameters.auto_tune and len(candidates):
            served = int(state.table.cache_block_size.item(candidates.item(0)))
            if served > 0:
                return served
        return self.parameters.block_size_tokens

    def produce(self, state: CycleState, candidates: SlotArray) -> None:
        request = state.request
        tokens = self._block_tokens(state, candidates)
        max_blocks = self.parameters.max_prefix_blocks_to_match
        if self.parameters.max_prefix_tokens_to_match > 0:
            max_blocks = max(self.parameters.max_prefix_tokens_to_match // tokens, 1)
        block_chars = tokens * 4
        data = request.prompt_bytes
        total = block_count(len(data), block_chars, max_blocks)
        if not total:
            state.write(STATE_KEY, _NO_MATCH)
            return
        seed = self._seeds.get(request.target_model, request.cache_salt)
        stop = min(total, FIRST_WALK_BLOCKS)
        if stop < total:  # a long prompt: one remembered with the same first block may share more
            hashes = chain_hashes(data, seed, block_chars, 0, 1)
            hashes = self._recent.shared_hashes(hashes[0], data, block_chars, stop + 1)[:total] or hashes
            stop = max(stop, len(hashes))
        else:
            hashes = chain_hashes(data, seed, block_chars, 0, stop)
        limit = state.table.slot_limit
        start = 0
        by_slot = _NO_COUNTS
        walks: list[tuple[int, Walk]] = []
        while True:  # walk chunks of growing size while every block so far is held somewhere
            if len(hashes) < stop:
                hashes += chain_hashes(data, hashes[-1], block_chars, len(hashes), stop)
            keys = as_keys(hashes[start:stop])
            walk = self.index.walk(keys, limit)
            walks.append((start, walk))
            if len(walk.by_slot):  # every non-empty count array is `limit` long
                by_slot = by_slot + walk.by_slot if len(by_slot) else walk.by_slot
            if walk.walked < stop - start or stop == total:
                break
            start, stop = stop, min(total, stop * WALK_GROWTH)
        match = PrefixMatch(total, by_slot, block_chars, data, hashes, walks)
        if start == 0 and stop == total:  # one walk over every block: its keys are the insert's
            match._keys = keys
        state.write(STATE_KEY, match)

    def pre_request(self, state: CycleState, result: SchedulingResult) -> None:
        match = state.read(STATE_KEY)
        if match is None or not match.total_blocks:
            return
        primary = result.primary.item(0)
        targets = [primary]
        matched = int(match.by_slot[primary]) if primary < len(match.by_slot) else 0
        record_prefix_match(matched * match.block_bytes, match.total_blocks * match.block_bytes)
        prefill = result.prefill
        if prefill is not None:
            targets.append(int(prefill.slots[0]))
        for slot in targets:
            self.index.insert(slot, match.keys(), self._capacity(state.table, slot), match.seen_entries())
        if self.replicate is not None:
            self.replicate(targets, match.keys())
        self._recent.remember(state.request.prompt_bytes, match.block_bytes, match.hashes())
        set_prefix_indexer_size(len(self.index))

    def learn_replicated(self, slot: int, keys: Keys) -> None:
        """Another replica sent these block hashes to the endpoint in `slot`."""
        if self.table is not None:
            self.index.insert(slot, keys, self._capacity(self.table, slot))
            set_prefix_indexer_size(len(self.index))

    def _capacity(self, table: EndpointTable, slot: int) -> int | None:
        if self.parameters.auto_tune and table.cache_num_blocks[slot] > 0:
            return int(table.cache_num_blocks[slot])
        return None


class PrefixCacheScorer(Scorer):
    type_name = "prefix-cache-scorer"
    #: the producer this scorer consumes (auto-created with defaults when the config does not declare one)
    consumes = ApproxPrefixCacheProducer.type_name
    bounded = True

    def score(self, state: CycleState, candidates: SlotArray) -> Scores:
        match = state.read(STATE_KEY)
        if match is None or not len(match.by_slot):
            return np.zeros(len(candidates))
        return match.matched_blocks(candidates) / match.total_blocks
