"""plugins/peer_picks.py: how far replicas that see the same pool keep apart."""

from __future__ import annotations

import numpy as np
import pytest

from epp.datastore.table import Endpoint, EndpointTable
from epp.plugins.peer_picks import Owners, PickRate, reach, step_aside


def test_reach_is_nothing_alone_or_with_peers_seen_at_once_and_at_most_one() -> None:
    assert reach(1, 0.02, 100.0) == 0.0
    assert reach(2, 0.0, 100.0) == 0.0
    assert reach(2, 0.01, 10.0) == pytest.approx(0.2)  # two 10 ms windows at 10 picks a second
    assert reach(3, 0.05, 100.0) == 1.0


def test_pick_rate_follows_the_intervals() -> None:
    rate = PickRate()
    assert rate.per_second() == 0.0
    for i in range(200):
        rate.pick(10.0 + i * 0.02)
    assert rate.per_second() == pytest.approx(50.0)


def test_two_replicas_take_equal_candidates_from_their_own_halves_and_a_clearly_better_one_both() -> None:
    table = EndpointTable(8)
    for i in range(1, 9):
        table.add(Endpoint(f"10.0.0.{i}", 8000, name=f"server-{i}"))
    owners_of = Owners()
    owners = owners_of.of(table, 2).take(table.live_slots())
    assert sorted(owners.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]  # every endpoint is one replica's own
    assert owners_of.of(table, 4).take(table.live_slots()).tolist().count(3) == 2
    per_pick = np.full(8, 0.06)
    equal = np.full(8, 0.1)
    for rank in (0, 1):
        priced = step_aside(equal, per_pick, owners, rank, 1.0)
        assert np.array_equal(priced == 0.1, owners == rank)  # the other's are priced up, its own are not
    better = equal.copy()
    better[int(np.flatnonzero(owners == 1)[0])] = 0.03  # better by more than a request's prefill: taken by both
    assert {int(np.argmin(step_aside(better, per_pick, owners, rank, 1.0))) for rank in (0, 1)} == {
        int(np.flatnonzero(owners == 1)[0])
    }
    assert np.array_equal(step_aside(equal, per_pick, owners, 0, 0.0), equal)  # no reach: unchanged
