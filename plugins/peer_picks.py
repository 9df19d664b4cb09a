"""Picks other replicas make that this one cannot see yet (active-active replicas, epp.shared).

A peer's pick reaches this replica's view a few tens of milliseconds after it was made. Two replicas that see
the same pool within that window compute the same best endpoint and both send a request there: the pile-up
sharing was meant to prevent, only shorter. On the virtual fleet (benchmarks/routing/virtual_fleet.py, two
replicas) a 10 ms delay cost 6 to 50 % of one
replica's TTFT p90 (shared prefixes, chat, unique prompts).

So the replicas deal the pool out among themselves for close calls: endpoints in the order of a hash of their
address (the same on every replica) go to the n live replicas in turn (replica r, by the order of their ids,
gets every n-th from the r-th). A candidate another replica owns gets `reach x one request's prefill there` added
to its price, where `reach` (at most 1) is how many picks the other replicas make in the window where neither
sees the other's: a staleness before this pick and one after, at this replica's own pick rate (a gateway
spreads requests evenly). Replicas that see the same near-equal candidates then take their own; a candidate
better by more than a request's prefill is taken by any; every endpoint is some replica's own, so none is left
out; with no peers, or their changes seen at once, nothing changes. (A first version placed endpoints on a
circle and priced them by their distance from each replica's point: endpoints far from every point starved,
none of the 1,024 chat requests on one of 8 servers.)
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from epp.datastore.table import EndpointTable

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


class Owners:
    """Which replica each endpoint belongs to: endpoints in the order of a hash of their address (the same on every
    replica), dealt out to the n replicas in turn (recomputed when the pool or n changes)."""

    def __init__(self) -> None:
        self._key: tuple[int, int] = (-1, 0)
        self._owners = np.zeros(0, dtype=np.intp)

    def of(self, table: EndpointTable, replicas: int) -> npt.NDArray[np.intp]:
        if (table.generation, replicas) != self._key:
            places = np.array([zlib.crc32(h.encode()) if h else 2**32 for h in table.hostports], dtype=np.float64)
            order = np.argsort(places, kind="stable")
            owners = np.empty(len(places), dtype=np.intp)
            owners[order] = np.arange(len(places)) % max(replicas, 1)
            self._owners = owners
            self._key = (table.generation, replicas)
        return self._owners


def step_aside(seconds: Floats, per_pick: Floats, owners: npt.NDArray[np.intp], rank: int, reach: float) -> Floats:
    """`seconds` (each candidate's price, lower is better) plus `reach x per_pick` at the candidates another replica
    owns; a new array."""
    priced = per_pick * reach
    priced *= owners != rank
    priced += seconds
    return priced
