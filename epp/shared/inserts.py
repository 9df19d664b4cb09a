"""Prefix-index inserts shared between replicas.

A plugin that learns from its own picks (the approximate prefix producer: "endpoint E was sent these block
hashes") implements `LearnsInserts`: after each local insert it hands the endpoints and keys to `replicate`,
and `learn_replicated` applies another replica's insert to its own index. The request path only appends to a
bounded outbox here (a full outbox drops the record and counts it) and wakes the link, which sends it in the
background.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from epp.datastore.table import EndpointTable
from epp.plugins.peer_picks import ReplicaPlace
from epp.plugins.prefix_demand import PrefixDemand

Keys = npt.NDArray[np.uint64]
R = TypeVar("R")
Replicate = Callable[[Sequence[int], Keys], None]


@runtime_checkable
class LearnsInserts(Protocol):
    """A plugin whose per-endpoint learning other replicas can replay."""

    #: set by epp.shared when --shared-state is on: called with (slots, keys) after each local insert
    replicate: Replicate | None

    def learn_replicated(self, slot: int, keys: Keys) -> None:
        """Apply another replica's insert of `keys` for the endpoint now in `slot`."""


@runtime_checkable
class SharesColumns(Protocol):
    """A plugin that keeps additive per-endpoint counts (e.g. queued prefill): other replicas' counts for the
    same endpoint are added into these arrays (see epp.shared.columns)."""

    def shared_columns(self) -> Mapping[str, npt.NDArray[np.float64]]:
        """name → float array indexed by table slot, owned (charged and released) by the plugin."""

    def peers_changed(self, slot: int) -> None:
        """The other replicas' part of these columns changed at `slot` (values derived from them are stale)."""


@runtime_checkable
class CountsPrefixDemand(Protocol):
    """A plugin that counts the requests passing through each prefix to tell a common one (plugins/prefix_demand.py).
    Each replica sees only its own requests; a peer's prefix insert stands for one of the peer's requests, counted
    here too, so that every replica counts the pool's traffic and calls the same prefixes common."""

    demand: PrefixDemand


@runtime_checkable
class AnticipatesPeers(Protocol):
    """A plugin that keeps replicas that see the same pool from picking the same endpoint within the time their
    picks take to reach each other (plugins/peer_picks.py): it needs this replica's rank among the live ones
    (by id, the same order everywhere), their count and that time."""

    #: set by epp.shared when --shared-state is on
    replica_place: ReplicaPlace | None


@dataclass(slots=True)
class InsertRecord:
    hostports: tuple[str, ...]
    keys: Keys
    #: wall-clock time the insert was made here (peers measure staleness from it)
    made_at: float


class Outbox(Generic[R]):
    """Bounded queue of one plugin's records waiting to be sent (a full one drops a record and counts it)."""

    def __init__(
        self,
        plugin: str,
        table: EndpointTable,
        capacity: int,
        on_drop: Callable[[int], None],
        on_append: Callable[[], None] | None = None,
    ) -> None:
        self.plugin = plugin
        self.table = table
        self.capacity = capacity
        self.on_drop = on_drop
        #: wakes the publisher
        self.on_append = on_append
        self.records: deque[R] = deque()

    def full(self) -> bool:
        if len(self.records) >= self.capacity:
            self.on_drop(1)
            return True
        return False

    def append(self, record: R) -> None:
        self.records.append(record)
        if self.on_append is not None:
            self.on_append()

    def drain(self) -> list[R]:
        records = list(self.records)
        self.records.clear()
        return records


class InsertOutbox(Outbox[InsertRecord]):
    """One plugin's inserts waiting to be sent (the plugin's `replicate`)."""

    def __call__(self, slots: Sequence[int], keys: Keys) -> None:
        if not self.full():
            hostports = self.table.hostports
            self.append(InsertRecord(tuple(hostports[s] for s in slots), keys, time.time()))


def apply_inserts(
    plugin: LearnsInserts, table: EndpointTable, hostports: Sequence[tuple[str, ...]], keys: Sequence[Keys]
) -> int:
    """Apply other replicas' inserts, in order; endpoints this replica does not know (yet) are skipped. The inserts
    to one endpoint are applied as one, for one index search: the same keys held, each as recent as its last use
    (one by one, a key already held would rank before the new keys of its own insert). Returns the number of
    (endpoint, insert) pairs applied."""
    by_slot: dict[int, list[Keys]] = {}
    for targets, record_keys in zip(hostports, keys, strict=True):
        for hostport in targets:
            slot = table.slot_of_hostport(hostport)
            if slot is not None:
                by_slot.setdefault(slot, []).append(record_keys)
    for slot, parts in by_slot.items():
        plugin.learn_replicated(slot, parts[0] if len(parts) == 1 else latest_order(np.concatenate(parts)))
    return sum(len(parts) for parts in by_slot.values())


def latest_order(keys: Keys) -> Keys:
    """`keys` in order with a repeated key kept only at its last place (its most recent use)."""
    _, first_from_end = np.unique(keys[::-1], return_index=True)
    return keys[np.sort(len(keys) - 1 - first_from_end)]
