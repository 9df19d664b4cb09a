"""The numpy prefix index against a plain-Python model of the reference's per-endpoint LRU + reverse map."""

from __future__ import annotations

import random
from collections import OrderedDict

import numpy as np
import pytest

from epp.plugins.prefix_index import PrefixIndex, as_keys


class ModelIndex:
    """hash → set of slots; per slot an OrderedDict LRU (the reference's golang-lru semantics)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.holders: dict[int, set[int]] = {}
        self.lru: dict[int, OrderedDict[int, None]] = {}

    def insert(self, slot: int, hashes: list[int], capacity: int | None = None) -> None:
        lru = self.lru.setdefault(slot, OrderedDict())
        for value in hashes:
            if value in lru:
                lru.move_to_end(value)
            else:
                lru[value] = None
                self.holders.setdefault(value, set()).add(slot)
            while len(lru) > (capacity or self.capacity):
                old, _ = lru.popitem(last=False)
                self.holders[old].discard(slot)

    def forget(self, slot: int) -> None:
        for value in self.lru.pop(slot, {}):
            self.holders[value].discard(slot)

    def match(self, hashes: list[int]) -> dict[int, int]:
        counts: dict[int, int] = {}
        for value in hashes:
            slots = self.holders.get(value)
            if not slots:
                break
            for slot in slots:
                counts[slot] = counts.get(slot, 0) + 1
        return counts


def as_dict(result: tuple[np.ndarray, np.ndarray]) -> dict[int, int]:
    slots, counts = result
    return dict(zip(slots.tolist(), counts.tolist(), strict=True))


@pytest.mark.parametrize("capacity", [40, 700])
def test_matches_the_reference_lru_under_random_traffic(capacity: int) -> None:
    rng = random.Random(capacity)
    ours, model = PrefixIndex(capacity), ModelIndex(capacity)
    prompts = [[rng.getrandbits(64) for _ in range(rng.randint(1, capacity))] for _ in range(25)]
    chains = [p[: rng.randint(1, len(p))] for p in prompts]
    seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # chain → entries its last walk met (may go stale)
    for step in range(3000):
        chain = rng.randrange(len(chains))
        hashes = chains[chain]
        action = rng.random()
        if action < 0.6:
            slot = rng.randrange(12)
            hints = seen.get(chain) if rng.random() < 0.7 else None
            ours.insert(slot, as_keys(hashes), hints=hints)
            model.insert(slot, hashes)
        elif action < 0.62:
            slot = rng.randrange(12)
            ours.forget(slot)
            model.forget(slot)
        else:
            assert as_dict(ours.match(as_keys(hashes))) == model.match(hashes), step
            seen[chain] = ours.walk(as_keys(hashes)).entries()
        assert len(ours) == sum(len(lru) for lru in model.lru.values())
    if capacity > 100:
        assert ours.bits > 12  # the table grew (rebuilt) along the way
    for slot in range(12):
        assert ours.slot_size(slot) == len(model.lru.get(slot, ()))


def test_lru_keeps_the_recently_touched_blocks() -> None:
    index = PrefixIndex(4)
    index.insert(0, as_keys([10, 11, 12, 13]))
    index.insert(0, as_keys([10]))  # touch 10: now 11 is the oldest
    index.insert(0, as_keys([20]))
    assert index.holds(0, as_keys([10, 11, 12, 13, 20])).tolist() == [True, False, True, True, True]


def test_walk_stops_at_the_first_block_nobody_holds() -> None:
    index = PrefixIndex(100)
    index.insert(1, as_keys([101, 102, 103, 104]))
    index.insert(2, as_keys([101, 102, 109, 104]))
    # block 3 is held by slot 1 only; the walk goes on through 4 (held by both) — greedy, not contiguous
    assert as_dict(index.match(as_keys([101, 102, 103, 104]))) == {1: 4, 2: 3}
    assert as_dict(index.match(as_keys([101, 107, 103]))) == {1: 1, 2: 1}
    assert as_dict(index.match(as_keys([108, 101]))) == {}


def test_grows_and_rebuilds_without_losing_entries() -> None:
    index = PrefixIndex(10_000)
    for slot in range(5):
        for r in range(50):
            index.insert(slot, as_keys([slot * 1_000_000 + r * 256 + b + 5 for b in range(256)]))
    assert len(index) == 5 * 10_000
    assert index.bits >= 17
    probe = [3 * 1_000_000 + 49 * 256 + b + 5 for b in range(256)]
    assert as_dict(index.match(as_keys(probe))) == {3: 256}
    index.forget(3)
    assert as_dict(index.match(as_keys(probe))) == {}
    assert len(index) == 4 * 10_000
