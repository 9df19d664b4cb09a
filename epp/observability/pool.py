"""`inference_pool_*` gauges computed from the endpoint table.

A prometheus_client Collector rather than a refresh task: the numbers are computed when /metrics is
scraped, on the HTTP server's thread, so nothing runs when nobody scrapes and nothing touches the
event loop. The pool averages and `ready_pods` are cached for `refresh_s`
(`--refresh-prometheus-metrics-interval`), so they change at most that often, as in the reference;
`per_pod_queue_size` and the EPP's own freshness gauges are read live.

Only endpoints with fresh metrics count (`metrics_time` within `staleness_s`,
`--metrics-staleness-threshold`). When no endpoint is fresh, `ready_pods` is 0 and the three
averages are absent rather than stuck at their last value (the reference leaves them at the last
value), so an HPA or alert never acts on a number nobody measured.

The columns are read without the table lock: a scrape may see one endpoint's row half-updated, which
moves a gauge by at most one sample's worth. Membership comes from `live_slots()`, which is safe to call
from this thread (a slot freed meanwhile has no endpoint and is skipped).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.datastore.table import EndpointTable

POOL = "inference_pool_"


@dataclass(frozen=True)
class PoolSnapshot:
    endpoints: int
    fresh: int
    average_kv_cache_utilization: float | None
    average_queue_size: float | None
    average_running_requests: float | None
    #: age in seconds of the oldest scraped endpoint's metrics (None: nothing scraped yet)
    max_metrics_age: float | None


class PoolGauges(Collector):
    def __init__(
        self,
        table: EndpointTable,
        pool_name: str,
        staleness_s: float,
        refresh_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.pool_name = pool_name
        self.staleness_s = staleness_s
        self.refresh_s = refresh_s
        self.clock = clock
        self._snapshot: PoolSnapshot | None = None
        self._snapshot_time = 0.0
        #: failed scrapes since start (the scrape plane's counter, monotonic across endpoint churn); read live
        self.scrape_errors_total: Callable[[], float] = lambda: 0.0

    def snapshot(self) -> PoolSnapshot:
        """The pool figures, recomputed when the cached ones are older than `refresh_s`."""
        now = self.clock()
        if self._snapshot is None or now - self._snapshot_time >= self.refresh_s:
            self._snapshot = self.compute(now)
            self._snapshot_time = now
        return self._snapshot

    def compute(self, now: float) -> PoolSnapshot:
        table = self.table
        slots = table.live_slots()
        scraped_at = table.metrics_time[slots]
        scraped = scraped_at > 0.0
        fresh = scraped & (now - scraped_at <= self.staleness_s)
        count = int(np.count_nonzero(fresh))
        max_age = float(now - scraped_at[scraped].min()) if scraped.any() else None
        if count == 0:
            return PoolSnapshot(len(slots), 0, None, None, None, max_age)
        fresh_slots = slots[fresh]
        return PoolSnapshot(
            endpoints=len(slots),
            fresh=count,
            average_kv_cache_utilization=float(table.kv_usage[fresh_slots].mean()),
            average_queue_size=float(table.waiting_queue[fresh_slots].mean()),
            average_running_requests=float(table.running_requests[fresh_slots].mean()),
            max_metrics_age=max_age,
        )

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        name = [self.pool_name]
        yield _gauge(
            "average_kv_cache_utilization",
            "The average kv cache utilization for an inference server pool.",
            name,
            snap.average_kv_cache_utilization,
        )
        yield _gauge(
            "average_queue_size",
            "The average number of requests pending in the model server queue.",
            name,
            snap.average_queue_size,
        )
        yield _gauge(
            "average_running_requests",
            "The average number of running requests on the model servers of the pool.",
            name,
            snap.average_running_requests,
        )
        yield _gauge("ready_pods", "The number of ready pods in the inference server pool.", name, snap.fresh)
        yield _gauge("endpoints", "Endpoints the EPP knows in the pool, fresh or not.", name, snap.endpoints)
        yield _gauge(
            "stale_endpoints",
            "Endpoints whose model-server metrics are older than --metrics-staleness-threshold or never scraped.",
            name,
            snap.endpoints - snap.fresh,
        )
        yield _gauge(
            "metrics_max_age_seconds",
            "Age of the oldest model-server metrics among the pool's scraped endpoints.",
            name,
            snap.max_metrics_age,
        )
        errors = CounterMetricFamily(
            POOL + "scrape_errors", "Failed model-server metrics scrapes since start, all endpoints.", labels=["name"]
        )
        errors.add_metric(name, self.scrape_errors_total())
        yield errors
        yield self._per_pod_queue_size()

    def _per_pod_queue_size(self) -> Metric:
        table = self.table
        family = GaugeMetricFamily(
            POOL + "per_pod_queue_size",
            "The total number of requests pending in the model server queue for each underlying pod.",
            labels=["name", "model_server_pod"],
        )
        slots = table.live_slots()
        queues = table.waiting_queue[slots].tolist()
        endpoints = table.endpoints
        for slot, queue in zip(slots.tolist(), queues, strict=True):
            endpoint = endpoints[slot]
            if endpoint is not None:
                family.add_metric([self.pool_name, endpoint.key], queue)
        return family


def _gauge(suffix: str, documentation: str, labels: list[str], value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(POOL + suffix, documentation, labels=["name"])
    if value is not None:
        family.add_metric(labels, value)
    return family
