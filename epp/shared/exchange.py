"""One replica's side of sharing, without a transport: the records it publishes and how it applies its peers'.

`outgoing` turns what changed of this replica's own shared numbers (everything with `full`: the heartbeat) and
the inserts waiting in its outboxes into stream entries; `apply_load` and `apply_inserts` fold peers' entries
into the columns and the prefix indexes. The link (epp.shared.link) carries the entries through Redis or Valkey;
the routing simulation (benchmarks/routing/virtual_fleet.py) hands them to the peers after a delay in virtual
time, so what it measures is this very merging.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

from epp.datastore.table import EndpointTable
from epp.plugins.prefix import ApproxPrefixCacheProducer
from epp.plugins.prefix_demand import CHECKPOINTS, PrefixDemand
from epp.shared.codec import BYE, DELTA, FULL, RecordError, decode_inserts, decode_load, encode_inserts, encode_load
from epp.shared.columns import SharedColumns
from epp.shared.inserts import (
    AnticipatesPeers,
    CountsPrefixDemand,
    InsertOutbox,
    Keys,
    LearnsInserts,
    SharesColumns,
    apply_inserts,
)
from epp.shared.metrics import DROPPED, PEERS, RECORDS, STALENESS
from epp.shared.observations import (
    LearnsLatency,
    ObservationOutbox,
    decode_observations,
    encode_observations,
    is_observations,
)

log = logging.getLogger("epp.shared")
R = TypeVar("R")
Fields = Mapping[bytes, bytes]
Stream = Literal["load", "inserts"]

#: weight of each load report's staleness in the running estimate of how late peers' changes are seen
STALENESS_WEIGHT = 0.05
#: a larger estimate (clocks far apart, a stalled process) is taken as this
STALENESS_CAP = 0.25

#: the director's in-flight columns, shared under these names
INFLIGHT_COLUMNS = {
    "inflight/requests": "inflight_requests",
    "inflight/tokens": "inflight_tokens",
    "inflight/prompt-tokens": "inflight_prompt_tokens",
}


class Exchange:
    def __init__(
        self,
        table: EndpointTable,
        plugins: Mapping[str, Any],
        replica: str,
        outbox_capacity: int,
        on_insert: Callable[[], None] | None = None,
    ) -> None:
        """Share the table's in-flight columns, the columns of every plugin that `SharesColumns` and the inserts
        of every plugin that `LearnsInserts` (its `replicate` is set here); `on_insert` runs after each insert
        lands in an outbox."""
        self.table = table
        self.replica = replica
        self.columns = SharedColumns(table)
        for name, attribute in INFLIGHT_COLUMNS.items():
            self.columns.register(name, getattr(table, attribute))
        self.learners: dict[str, LearnsInserts] = {}
        self.outboxes: list[InsertOutbox] = []
        self.latency_learners: dict[str, LearnsLatency] = {}
        self.observed: list[ObservationOutbox] = []
        for name, plugin in plugins.items():
            if isinstance(plugin, SharesColumns):
                self.columns.register_all(name, plugin.shared_columns(), plugin.peers_changed)
            if isinstance(plugin, LearnsInserts):
                dropped = DROPPED.value("outbox_full").inc
                outbox = InsertOutbox(name, table, outbox_capacity, dropped, on_insert)
                plugin.replicate = outbox
                self.learners[name] = plugin
                self.outboxes.append(outbox)
            if isinstance(plugin, AnticipatesPeers):
                plugin.replica_place = self.replica_place
            if isinstance(plugin, LearnsLatency):
                observed = ObservationOutbox(name, table, outbox_capacity, DROPPED.value("outbox_full").inc, on_insert)
                plugin.model.on_learn = observed
                self.latency_learners[name] = plugin
                self.observed.append(observed)
        #: the prefix demand counters, and the prefix producer whose peer inserts they count (one insert per request:
        #: with several prefix producers configured, the first by name)
        self.demands: list[PrefixDemand] = [p.demand for p in plugins.values() if isinstance(p, CountsPrefixDemand)]
        prefix_producers = sorted(n for n, p in self.learners.items() if isinstance(p, ApproxPrefixCacheProducer))
        self.demand_source = prefix_producers[0] if prefix_producers else None
        #: running mean of the load reports' staleness (seconds from a peer's change to its application here)
        self.staleness = 0.0

    def replica_place(self) -> tuple[int, int, float]:
        """(this replica's rank among the live replicas, by id; how many are live; how late peers' changes are
        seen here, in seconds)."""
        return self.columns.peers_before(self.replica), self.columns.peers + 1, self.staleness

    def outgoing(self, full: bool, changed_at: float | None) -> list[tuple[Stream, dict[bytes, bytes]]]:
        """The entries to publish now: this replica's changed (all, with `full`) numbers, as made at
        `changed_at` (wall time; None: now), then one batch of waiting inserts per plugin. What is returned
        counts as published."""
        self.columns.settle()
        hostports, values = self.columns.changes(full=full)
        entries: list[tuple[Stream, dict[bytes, bytes]]] = []
        if full or hostports:
            made = time.time() if changed_at is None else changed_at
            kind = FULL if full else DELTA
            entries.append(("load", encode_load(self.replica, made, kind, self.columns.names, hostports, values)))
        for outbox in self.outboxes:
            records = outbox.drain()
            if records:
                entries.append(("inserts", encode_inserts(self.replica, outbox.plugin, records)))
        for observed in self.observed:
            observations = observed.drain()
            if observations:
                entries.append(("inserts", encode_observations(self.replica, observed.plugin, observations)))
        return entries

    def apply_load(self, fields: Fields, wall: float | None, now: float) -> None:
        """A peer's load report (this replica's own are skipped); `wall` (None: not measured) times its staleness,
        `now` (monotonic) is when the peer was last heard."""
        report = self._peer_record(fields, decode_load)
        if report is None:
            return
        RECORDS.value("load", "received").inc()
        if report.kind == BYE:
            self.columns.forget(report.replica)
            log.info("replica %s left the shared view (stopped)", report.replica)
        else:
            full = report.kind == FULL
            self.columns.receive(report.replica, report.names, report.hostports, report.values, full, now)
            if wall is not None:
                late = max(wall - report.sent_at, 0.0)
                STALENESS.distribution("load").observe(late)
                self.staleness += STALENESS_WEIGHT * (min(late, STALENESS_CAP) - self.staleness)
        PEERS.value().set(float(self.columns.peers))

    def apply_inserts(self, records: list[Fields], wall: float | None) -> None:
        """Apply peers' insert batches, those of one plugin together (inserts to one endpoint are merged); `wall`
        as for `apply_load` (None also for a replay, which counts no record received)."""
        by_plugin: dict[str, tuple[list[tuple[str, ...]], list[Keys]]] = {}
        for fields in records:
            if is_observations(fields):
                self._apply_observations(fields, wall)
                continue
            batch = self._peer_record(fields, decode_inserts)
            if batch is None or batch.plugin not in self.learners:
                continue  # this replica's own, malformed, or of a plugin this replica's configuration lacks
            hostports, keys = by_plugin.setdefault(batch.plugin, ([], []))
            hostports.extend(batch.hostports)
            keys.extend(batch.keys)
            if batch.plugin == self.demand_source:
                self._count_demand(batch.keys)
            if wall is not None:
                RECORDS.value("inserts", "received").inc()
                STALENESS.distribution("inserts").observe(max(wall - batch.sent_at, 0.0))
        for plugin, (hostports, keys) in by_plugin.items():
            apply_inserts(self.learners[plugin], self.table, hostports, keys)

    def _apply_observations(self, fields: Fields, wall: float | None) -> None:
        """A peer's latency observations teach this replica's model of the same plugin (of the same features)."""
        batch = self._peer_record(fields, decode_observations)
        learner = None if batch is None else self.latency_learners.get(batch.plugin)
        if batch is None or learner is None or batch.rows.shape[1] != learner.model.features_count + 1:
            return
        if wall is not None:
            RECORDS.value("inserts", "received").inc()
            STALENESS.distribution("inserts").observe(max(wall - batch.sent_at, 0.0))
        now = learner.clock()
        for hostport, row in zip(batch.hostports, batch.rows.tolist(), strict=True):
            slot = self.table.slot_of_hostport(hostport)
            if slot is not None:
                learner.model.learn_peer(slot, row[:-1], row[-1], now)

    def _count_demand(self, inserts: list[Keys]) -> None:
        """Count each of a peer's inserts (a request's block keys, every block) as one request through its prefixes."""
        for demand in self.demands:
            for keys in inserts:
                demand.count(keys[: CHECKPOINTS[0]].tolist(), len(keys))

    def _peer_record(self, fields: Fields, decode: Callable[[Fields], R]) -> R | None:
        """The decoded record, or None for this replica's own records and malformed ones (counted)."""
        if fields.get(b"r", b"").decode(errors="replace") == self.replica:
            return None
        try:
            return decode(fields)
        except RecordError as exc:
            DROPPED.value("malformed").inc()
            log.debug("ignored a record: %s", exc)
            return None
