"""lora-affinity-scorer: per-adapter slot masks kept by the table, checked by hand and against the formula."""

from __future__ import annotations

import random

import numpy as np

from epp.datastore.table import Endpoint
from epp.plugins.scorers import LoraAffinityScorer
from epp.scheduling.plugin import CycleState
from epp.scheduling.types import LLMRequest
from tests.support.plugins import make, pool


def scores(table, adapter: str) -> list[float]:  # type: ignore[no-untyped-def]
    cycle = CycleState(LLMRequest("r", adapter, adapter, {}), table)
    return make(LoraAffinityScorer).score(cycle, table.live_slots()).tolist()  # type: ignore[no-any-return]


def test_active_room_waiting_and_none_by_hand() -> None:
    table = pool(4)
    table.set_lora(0, frozenset({"sql"}), frozenset(), 2)  # running it
    table.set_lora(1, frozenset({"a"}), frozenset(), 2)  # room for one more
    table.set_lora(2, frozenset({"a", "b"}), frozenset({"sql"}), 2)  # full, sql waiting
    table.set_lora(3, frozenset({"a", "b"}), frozenset(), 2)  # full, no sql
    assert scores(table, "sql") == [1.0, 0.8, 0.6, 0.0]
    assert scores(table, "b") == [0.8, 0.8, 1.0, 1.0]


def test_masks_follow_updates_removal_and_slot_reuse() -> None:
    table = pool(2)
    table.set_lora(1, frozenset({"x"}), frozenset(), 1)
    assert table.lora_active_mask("x") is not None
    table.set_lora(1, frozenset(), frozenset({"x"}), 1)
    assert table.lora_active_mask("x") is None, "an adapter no slot runs is dropped"
    assert scores(table, "x") == [0.0, 0.6]  # slot 1: x waiting fills its one place
    table.remove("pod-1")
    assert table.lora_waiting_mask("x") is None
    slot = table.add(Endpoint("10.0.0.9", 8000, name="pod-9"))
    assert slot == 1, "the freed slot is reused"
    assert table.lora_active[slot] == frozenset() and table.lora_loaded[slot] == 0


def test_matches_the_formula_under_random_updates() -> None:
    rng = random.Random(7)
    adapters = [f"lora-{i}" for i in range(6)]
    table = pool(12)
    for _ in range(300):
        slot = rng.randrange(12)
        active = frozenset(rng.sample(adapters, rng.randint(0, 3)))
        waiting = frozenset(rng.sample(adapters, rng.randint(0, 2))) - active
        table.set_lora(slot, active, waiting, float(rng.randint(1, 4)))
        adapter = rng.choice(adapters)
        expected = []
        for s in table.live_slots().tolist():
            if adapter in table.lora_active[s]:
                expected.append(1.0)
            elif len(table.lora_active[s]) + len(table.lora_waiting[s]) < table.max_lora[s]:
                expected.append(0.8)
            elif adapter in table.lora_waiting[s]:
                expected.append(0.6)
            else:
                expected.append(0.0)
        assert scores(table, adapter) == expected
    assert np.array_equal(
        table.lora_loaded[:12], [len(table.lora_active[s]) + len(table.lora_waiting[s]) for s in range(12)]
    )
