"""The shared state's metrics: connection, peers, records exchanged and dropped, staleness, peers' load."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.observability.families import FamiliesCollector, Family
from epp.shared.columns import SharedColumns

STALENESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
CONNECTED = Family("gauge", "epp_shared_state_connected", "1 while this replica reaches the --shared-state store.")
PEERS = Family("gauge", "epp_shared_state_peers", "Other replicas whose reports this replica currently adds in.")
RECORDS = Family(
    "counter",
    "epp_shared_state_records_total",
    "Records exchanged with other replicas, by stream (load, inserts) and direction (sent, received).",
    ["stream", "direction"],
)
DROPPED = Family(
    "counter",
    "epp_shared_state_dropped_total",
    "Prefix inserts not shared (outbox_full, disconnected) and records not applied (malformed).",
    ["reason"],
)
STALENESS = Family(
    "histogram",
    "epp_shared_state_staleness_seconds",
    "Time from a peer's record (its oldest insert, or its load report) to its application here, by stream.",
    ["stream"],
    buckets=STALENESS_BUCKETS,
)
COLLECTOR = FamiliesCollector([CONNECTED, PEERS, RECORDS, DROPPED, STALENESS])


class PeerLoadCollector(Collector):
    """`epp_shared_state_peer_inflight_requests{endpoint}`: the other replicas' in-flight requests this replica
    adds in, per endpoint (read when /metrics is scraped)."""

    def __init__(self, columns: SharedColumns) -> None:
        self.columns = columns

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "epp_shared_state_peer_inflight_requests",
            "In-flight requests other replicas report per endpoint (added into this replica's view).",
            labels=["endpoint"],
        )
        column = self.columns.names.index("inflight/requests")
        table = self.columns.table
        for slot in table.live_slots().tolist():
            hostport = table.hostports[slot]
            if hostport:
                gauge.add_metric([hostport], float(self.columns.applied[slot, column]))
        yield gauge
