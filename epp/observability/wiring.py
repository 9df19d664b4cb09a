"""One call that puts every EPP metric family on the app's registry: `install(registry, table, settings)`."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry

from epp import tasks
from epp.datastore.table import EndpointTable
from epp.observability.extension import (
    EXTENSION,
    ExtensionMetrics,
    InflightChargeCollector,
    StreamsCollector,
    set_build_info,
)
from epp.observability.metrics import RequestMetrics
from epp.observability.pool import PoolGauges
from epp.settings import Settings

#: the `name` label of the pool gauges when the EPP runs without an InferencePool (--endpoints, ...)
STANDALONE_POOL_NAME = "standalone"


class StreamCounters(Protocol):
    """What the gRPC servicer exposes: plain integer counters."""

    streams_in_flight: int
    streams_total: int


@dataclass
class Observability:
    registry: CollectorRegistry
    #: the StreamObserver to hand every ExtProcStream
    request_metrics: RequestMetrics
    pool: PoolGauges
    extension: ExtensionMetrics
    #: the `name` / `inference_pool` label value of pool-level metrics
    pool_name: str = STANDALONE_POOL_NAME

    def watch_streams(self, servicer: StreamCounters) -> None:
        """Export the servicer's stream counters (read at scrape time; no per-request cost)."""
        self.registry.register(
            StreamsCollector(lambda: float(servicer.streams_in_flight), lambda: float(servicer.streams_total))
        )


def install(registry: CollectorRegistry, table: EndpointTable, settings: Settings) -> Observability:
    """Register request, pool and extension metrics."""
    request_metrics = RequestMetrics(registry)
    pool_name = settings.pool_name
    selector = settings.endpoint_selector
    if not pool_name and selector:
        from epp.k8s.runtime import deployment_of  # selector mode names the pool after the EPP's Deployment

        pool_name = deployment_of(os.environ.get("POD_NAME", ""))
    pool_name = pool_name or STANDALONE_POOL_NAME
    pool = PoolGauges(
        table,
        pool_name,
        staleness_s=settings.metrics_staleness_threshold,
        refresh_s=settings.refresh_prometheus_metrics_interval,
    )
    registry.register(pool)
    set_build_info()
    registry.register(EXTENSION.collector)
    registry.register(tasks.COLLECTOR)
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:  # installed outside the serving loop (tests)
        loop = None
    registry.register(tasks.TaskCountCollector(loop))
    registry.register(
        InflightChargeCollector(
            lambda: float(table.inflight_requests.sum()), lambda: float(table.inflight_tokens.sum())
        )
    )
    return Observability(registry, request_metrics, pool, EXTENSION, pool_name)
