"""Wiring and lifecycle of `epp bbr`: the ext_proc server (the EPP's servicer pumping `BodyRouterStream`s),
the health server (SERVING from start until SIGTERM) and the metrics port."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.bbr.settings import BbrSettings
from epp.bbr.stream import BodyRouterCounts, BodyRouterStream
from epp.extproc.servicer import ExtProcServicer
from epp.health import HealthState
from epp.observability.server import start_metrics_server
from epp.servers import add_extproc_port, bind, extproc_server, health_server, run_server
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

log = logging.getLogger("epp.bbr")


class BodyRouterMetrics(Collector):
    """The reference's `bbr_*` counters, read from the streams' shared counts when /metrics is scraped."""

    def __init__(self, counts: BodyRouterCounts) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self.counts
        for name, value, text in (
            ("bbr_success", counts.success, "model name copied from the body into the request headers"),
            ("bbr_model_not_in_body", counts.model_not_in_body, "request bodies without a model"),
            ("bbr_model_not_parsed", counts.model_not_parsed, "request bodies whose model could not be read"),
        ):
            family = CounterMetricFamily(name, text)
            family.add_metric([], value)
            yield family


@dataclass
class BodyRouterRuntime:
    settings: BbrSettings
    counts: BodyRouterCounts
    servicer: ExtProcServicer
    health: HealthState
    grpc_server: grpc.aio.Server
    health_server: grpc.aio.Server
    metrics_server: WSGIServer
    grpc_port: int
    health_port: int


async def start(settings: BbrSettings) -> BodyRouterRuntime:
    counts = BodyRouterCounts()
    streaming, max_body = settings.streaming, settings.max_request_body_bytes
    servicer = ExtProcServicer(
        lambda: BodyRouterStream(counts, streaming, max_body), idle_timeout=settings.stream_idle_timeout
    )
    server = extproc_server(settings)
    pb_grpc.add_ExternalProcessorServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    grpc_port = add_extproc_port(server, settings)
    health = HealthState()
    health.synced = True  # nothing to discover: serving as soon as the port listens
    health_grpc, health_port = health_server(settings, health)
    registry = CollectorRegistry()
    registry.register(BodyRouterMetrics(counts))
    metrics_server, _ = bind(
        "--metrics-port", settings.metrics_port, lambda: start_metrics_server(settings.metrics_port, registry)
    )
    await server.start()
    await health_grpc.start()
    transport = "TLS" if settings.secure_serving else "plaintext"
    mode = "FULL_DUPLEX_STREAMED" if streaming else "BUFFERED"
    ports = f"ext_proc :{grpc_port} ({transport}, {mode} unless Envoy says), health :{health_port}"
    log.info("epp bbr serving: %s, metrics :%d (without authentication)", ports, settings.metrics_port)
    return BodyRouterRuntime(
        settings, counts, servicer, health, server, health_grpc, metrics_server, grpc_port, health_port
    )


async def stop(runtime: BodyRouterRuntime) -> None:
    runtime.health.draining = True
    await runtime.grpc_server.stop(grace=runtime.settings.drain_timeout)
    await runtime.health_server.stop(grace=None)
    runtime.metrics_server.shutdown()
    runtime.metrics_server.server_close()
    log.info("stopped")


def run(settings: BbrSettings) -> int:
    return run_server("epp bbr", settings, start, stop)
