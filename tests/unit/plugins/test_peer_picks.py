"""plugins/peer_picks.py: how far replicas that see the same pool keep apart."""

from __future__ import annotations

import numpy as np
import pytest

from epp.datastore.table import Endpoint, EndpointTable
from epp.plugins.peer_picks import Circle, PickRate, reach, step_aside


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


def test_two_replicas_take_equal_candidates_from_different_ends_and_a_clearly_better_one_both() -> None:
    table = EndpointTable(8)
    for i in range(1, 9):
        table.add(Endpoint(f"10.0.0.{i}", 8000, name=f"server-{i}"))
    circle = Circle()
    places = circle.places(table, table.live_slots())
    assert np.array_equal(circle.places(table, table.live_slots()[::-1]), places[::-1])
    assert len(set(places.tolist())) == 8 and (places >= 0).all() and (places < 1).all()
    per_pick = np.full(8, 0.06)
    equal = np.full(8, 0.1)
    first = int(np.argmin(step_aside(equal, per_pick, places, 0, 2, 1.0)))
    second = int(np.argmin(step_aside(equal, per_pick, places, 1, 2, 1.0)))
    assert first != second
    better = equal.copy()
    better[3] = 0.03  # better by more than a request's prefill: wherever it lies on the circle
    assert {int(np.argmin(step_aside(better, per_pick, places, rank, 2, 1.0))) for rank in (0, 1)} == {3}
    assert np.array_equal(step_aside(equal, per_pick, places, 1, 2, 0.0), equal)  # no reach: unchanged


def test_two_replicas_price_every_endpoint_up_by_the_same_total() -> None:
    # measured the shorter way round, the distances to the two replicas' points add up to half the circle: no
    # endpoint is priced up (or favoured) by both
    places = np.linspace(0.0, 0.99, 100)
    zero, one = np.zeros(100), np.ones(100)
    total = step_aside(zero, one, places, 0, 2, 1.0) + step_aside(zero, one, places, 1, 2, 1.0)
    assert np.allclose(total, 1.0)
