"""/metrics is collected on prometheus_client's HTTP thread while the event loop changes what it reads.

Each test churns on this thread and collects on another for a bounded time; any exception on the
collecting side (a 500 for the scraper) fails it. Both failed within a second before the fixes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from epp.datastore.table import Endpoint, EndpointTable
from epp.flowcontrol.queue import FlowQueue, Item, QueueSettings
from epp.observability.pool import PoolGauges

SECONDS = 1.5


def collect_while(churn: Callable[[int], None], collect: Callable[[], object]) -> int:
    """Run `churn(i)` here and `collect()` on a thread until SECONDS pass; returns collections done."""
    stop = threading.Event()
    errors: list[BaseException] = []
    done = [0]

    def collector() -> None:
        while not stop.is_set():
            try:
                collect()
            except BaseException as error:  # any failure is what the test looks for
                errors.append(error)
                return
            done[0] += 1

    thread = threading.Thread(target=collector)
    thread.start()
    deadline = time.monotonic() + SECONDS
    i = 0
    try:
        while time.monotonic() < deadline and not errors:
            churn(i)
            i += 1
    finally:
        stop.set()
        thread.join(5)
    assert not errors, f"collect failed after {done[0]} collections: {errors[0]!r}"
    assert done[0] > 10 and i > 100, (done[0], i)
    return done[0]


def test_pool_gauges_and_live_slots_while_endpoints_come_and_go() -> None:
    table = EndpointTable(16384)
    for i in range(200):
        table.add(Endpoint(f"10.0.0.{i}", 8000, name=f"p{i}"))
    gauges = PoolGauges(table, "pool", staleness_s=2.0, refresh_s=0.0)

    def churn(i: int) -> None:
        table.remove(f"p{i % 200}")
        table.add(Endpoint(f"10.0.0.{i % 200}", 8000, name=f"p{i % 200}"))

    def collect() -> None:
        for metric in gauges.collect():
            for sample in metric.samples:
                if "model_server_pod" in sample.labels:
                    assert sample.labels["model_server_pod"].startswith("p")

    collect_while(churn, collect)


def test_flow_sizes_while_flows_come_and_go() -> None:
    queue = FlowQueue(QueueSettings())
    items: list[Item] = []

    def churn(i: int) -> None:
        item = Item(f"tenant-{i % 97}", priority=i % 3, size=10, arrival=0.0, deadline=float("inf"))
        queue.push(item)
        items.append(item)
        if len(items) > 50:
            queue.remove(items.pop(0))

    collect_while(churn, queue.flow_sizes)
