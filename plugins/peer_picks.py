"""Picks other replicas make that this one cannot see yet (active-active replicas, epp.shared).

A peer's pick reaches this replica's view a few tens of milliseconds after it was made. Two replicas that see
the same pool within that window compute the same best endpoint and both send a request there: the pile-up
sharing was meant to prevent, only shorter. On the virtual fleet (benchmarks/routing/virtual_fleet.py, two
replicas) a 10 ms delay cost 6 to 50 % of one
replica's TTFT p90 (shared prefixes, chat, unique prompts).

So each replica prefers its own part of the pool when candidates are close: endpoints are placed on a circle by
a hash of their address (the same on every replica), and a replica of rank r among n (their ids' order, also
the same everywhere) measures each endpoint's distance from its own point r / n, the shorter way round, as a
fraction of half the circle. A candidate's price gets `distance x reach x one request's prefill there` added,
where `reach` (at most 1) is how many picks the other replicas make in the window where neither sees the
other's: a staleness before this pick and one after, at this replica's own pick rate (a gateway spreads
requests evenly). Replicas that see the same near-equal candidates then take them from different parts of the
pool; a candidate better by more than a request's prefill is taken whatever the distance; with no peers, or
their changes seen at once, nothing changes. The shorter way round matters: measured one way round, an endpoint
just before a replica's point is far for that replica and half-way for the other, so every replica priced it
up (the endpoints just after the points were favoured by all); the shorter way, two replicas' distances to any
endpoint add up to the same half circle.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from epp.datastore.table import EndpointTable, SlotArray

#: weight of each interval between picks in the running mean that gives the pick rate
RATE_WEIGHT = 0.05
#: a peer's pick collides with this one when made up to a staleness before it (not seen here yet) or after it
#: (made before the peer sees this one)
WINDOWS = 2.0

Floats = npt.NDArray[np.float64]
#: () -> (this replica's rank among the live replicas, how many are live, seconds until a peer's change is
#: seen here)
ReplicaPlace = Callable[[], tuple[int, int, float]]


class PickRate:
    """This replica's picks a second, as a running mean of the intervals between them."""

    def __init__(self) -> None:
        self.interval = 0.0
        self.last = 0.0

    def pick(self, now: float) -> None:
        if self.last > 0:
            gap = max(now - self.last, 0.0)
            self.interval = gap if self.interval <= 0 else self.interval + RATE_WEIGHT * (gap - self.interval)
        self.last = now

    def per_second(self) -> float:
        return 1.0 / self.interval if self.interval > 0 else 0.0


def reach(replicas: int, staleness: float, rate: float) -> float:
    """How many picks of the other replicas can collide with one of this replica's, at most 1."""
    return min((replicas - 1) * WINDOWS * staleness * rate, 1.0)


class Circle:
    """Each endpoint's place on the circle [0, 1), from a hash of its address, per table slot (recomputed when the
    table's endpoints change)."""

    def __init__(self) -> None:
        self._generation = -1
        self._places: Floats = np.zeros(0)

    def places(self, table: EndpointTable, candidates: SlotArray) -> Floats:
        if table.generation != self._generation:
            self._places = np.array([zlib.crc32(hostport.encode()) / 2**32 for hostport in table.hostports])
            self._generation = table.generation
        return self._places.take(candidates)


def step_aside(seconds: Floats, per_pick: Floats, places: Floats, rank: int, replicas: int, reach: float) -> Floats:
    """`seconds` (each candidate's price, lower is better) plus `reach x per_pick x` its distance from this
    replica's point, the shorter way round, over half the circle; a new array."""
    distance = places - rank / replicas
    np.mod(distance, 1.0, out=distance)
    np.minimum(distance, 1.0 - distance, out=distance)
    distance *= 2.0
    distance *= per_pick
    distance *= reach
    distance += seconds
    return distance
