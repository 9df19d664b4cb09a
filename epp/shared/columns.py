"""Per-endpoint numbers that replicas add up, folded into the very columns scorers read.

A registered column (a float array indexed by table slot, e.g. the director's in-flight requests or a plugin's
queued prefill tokens) holds this replica's own value plus the sum of what the live peers last reported for
the same endpoint. Peers name endpoints by `ip:port` (slots are each replica's own). `applied[slot]` is the
peers' part currently added in, so this replica's own part is always `column - applied`: the owner keeps
charging and releasing its own requests as before, and every reader (fresh load, the scrape plane's snapshot,
the in-flight scorers, the predicted-TTFT producer) sees the pool-wide value without knowing about replicas.

Each peer's report replaces its previous one for the endpoints it names (a full report replaces all of them);
a peer not heard from for `ttl` seconds is dropped and its part taken out. Pure and single-threaded: the
link calls it from the event loop, between requests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from epp.datastore.table import Endpoint, EndpointTable, FloatColumn

Matrix = npt.NDArray[np.float64]


@dataclass
class _Peer:
    last_heard: float
    #: ip:port → the peer's values, in this replica's column order
    values: dict[str, Matrix] = field(default_factory=dict)


class SharedColumns:
    def __init__(self, table: EndpointTable) -> None:
        self.table = table
        self.names: list[str] = []
        self._columns: list[FloatColumn] = []
        #: per column, called with a slot after the peers' part there changed (None: nobody asked)
        self._listeners: list[Callable[[int], None] | None] = []
        self.applied: Matrix = np.zeros((table.capacity, 0))
        #: own values as last published (NaN: publish this row next time)
        self._published: Matrix = np.zeros((table.capacity, 0))
        self._peers: dict[str, _Peer] = {}
        #: endpoints added since the last `settle` (their slot's peer part is folded in then)
        self._pending: set[str] = set()
        table.subscribe(self._on_change)

    # --- registration -----------------------------------------------------------------------------

    def register(self, name: str, column: FloatColumn, listener: Callable[[int], None] | None = None) -> None:
        """Share `column` (one float per table slot) under `name`: replicas with the same name add up.
        `listener(slot)` runs after the peers' part of the column changed at `slot`."""
        if name in self.names:
            raise ValueError(f"shared column {name!r} is registered twice")
        if column.shape != (self.table.capacity,):
            raise ValueError(f"shared column {name!r} has shape {column.shape}, not ({self.table.capacity},)")
        self.names.append(name)
        self._columns.append(column)
        self._listeners.append(listener)
        self.applied = np.hstack((self.applied, np.zeros((self.table.capacity, 1))))
        self._published = np.hstack((self._published, np.full((self.table.capacity, 1), np.nan)))

    def register_all(
        self, prefix: str, columns: Mapping[str, FloatColumn], listener: Callable[[int], None] | None = None
    ) -> None:
        for name, column in columns.items():
            self.register(f"{prefix}/{name}", column, listener)

    # --- this replica's own values ----------------------------------------------------------------

    def own(self, slots: npt.NDArray[np.intp]) -> Matrix:
        """This replica's own part of every column at `slots`, (len(slots), columns)."""
        own = np.empty((len(slots), len(self._columns)))
        for c, column in enumerate(self._columns):
            own[:, c] = column.take(slots)
        own -= self.applied[slots]
        np.maximum(own, 0.0, out=own)  # a release rounding below the peers' part
        return own

    def changes(self, full: bool = False) -> tuple[list[str], Matrix]:
        """(ip:port, own values) of the live endpoints whose own values changed since the last call (all of
        them with `full`); what is returned counts as published."""
        slots = self.table.live_slots()
        own = self.own(slots)
        if not full:
            changed = (own != self._published[slots]).any(axis=1)
            slots, own = slots[changed], own[changed]
        self._published[slots] = own
        hostports = self.table.hostports
        return [hostports[int(s)] for s in slots], own

    # --- peers' values ----------------------------------------------------------------------------

    def receive(
        self, peer: str, names: Sequence[str], hostports: Sequence[str], values: Matrix, full: bool, now: float
    ) -> None:
        """A peer's report: `values[i, j]` is its own value of column `names[j]` at endpoint `hostports[i]`.
        Columns this replica does not have are ignored; one it has that the report lacks counts 0."""
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _Peer(now)
        state.last_heard = now
        mine = {name: c for c, name in enumerate(self.names)}
        rows = np.zeros((len(hostports), len(self.names)))
        for j, name in enumerate(names):
            c = mine.get(name)
            if c is not None:
                rows[:, c] = values[:, j]
        touched = set(hostports)
        if full:
            touched.update(state.values)
            state.values = {}
        for i, hostport in enumerate(hostports):
            state.values[hostport] = rows[i]
        for hostport in touched:
            self._fold(hostport)

    def heard(self, peer: str, now: float) -> None:
        """A peer is alive (any record from it counts as a heartbeat)."""
        state = self._peers.get(peer)
        if state is None:
            self._peers[peer] = _Peer(now)
        else:
            state.last_heard = now

    def forget(self, peer: str) -> None:
        """Take a peer's part out (it said goodbye, or went silent)."""
        state = self._peers.pop(peer, None)
        if state is not None:
            for hostport in state.values:
                self._fold(hostport)

    def expire(self, now: float, ttl: float) -> list[str]:
        """Drop the peers not heard from for `ttl` seconds; returns their ids."""
        silent = [peer for peer, state in self._peers.items() if state.last_heard < now - ttl]
        for peer in silent:
            self.forget(peer)
        return silent

    def forget_all(self) -> None:
        for peer in list(self._peers):
            self.forget(peer)

    @property
    def peers(self) -> int:
        return len(self._peers)

    def peers_before(self, replica: str) -> int:
        """Live peers whose ids sort before `replica` (every replica ranks the same way)."""
        return sum(peer < replica for peer in self._peers)

    def peer_total(self, hostport: str) -> Matrix:
        """What the live peers report for this endpoint, summed (this replica's column order)."""
        total = np.zeros(len(self.names))
        for state in self._peers.values():
            values = state.values.get(hostport)
            if values is not None:
                total += values
        return total

    def settle(self) -> None:
        """Fold the peers' part into endpoints added since the last call."""
        pending, self._pending = self._pending, set()
        for hostport in pending:
            self._fold(hostport)

    # --- internals --------------------------------------------------------------------------------

    def _fold(self, hostport: str) -> None:
        slot = self.table.slot_of_hostport(hostport)
        if slot is None:
            return
        total = self.peer_total(hostport)
        delta = total - self.applied[slot]
        self.applied[slot] = total
        changed = np.flatnonzero(delta).tolist()
        for c in changed:
            self._columns[c][slot] += delta[c]
        listeners = {listener for c in changed if (listener := self._listeners[c]) is not None}
        for listener in listeners:  # once every column is updated
            listener(slot)

    def _on_change(self, kind: str, slot: int, endpoint: Endpoint) -> None:
        # Runs inside the table's add/remove, before (or after) the owners reset their own columns for a new
        # occupant; folding waits for `settle` so that no owner's reset wipes a peer part this has applied.
        if kind == "update":
            return
        self.applied[slot] = 0.0
        self._published[slot] = np.nan
        if kind == "add":
            self._pending.add(endpoint.hostport)
