"""Wiring and lifecycle of the EPP process: start, ready, drain, stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import grpc
import uvloop
from prometheus_client import CollectorRegistry, disable_created_metrics

from epp import tls
from epp.cli import Settings
from epp.config.schema import (
    ConfigError,
    EndpointPickerConfig,
    default_config,
    load_config_file,
    load_config_text,
)
from epp.datalayer.params import CoreMetricsExtractorParams, MetricsDataSourceParams
from epp.datalayer.scraper import ScrapePlane, create_shared_table
from epp.datastore.table import EndpointTable
from epp.director import Director
from epp.discovery.static import EndpointsFileWatcher, EndpointSpecError, check_capacity, parse_endpoints_flag
from epp.extproc.core import ExtProcStream, openai_parser, passthrough_parser
from epp.extproc.servicer import ExtProcServicer
from epp.flowcontrol.controller import FlowController
from epp.health import HealthState, add_health
from epp.observability import logging as epp_logging
from epp.observability.flowcontrol import FlowControlMetrics
from epp.observability.server import start_metrics_server
from epp.observability.wiring import install as install_observability
from epp.scheduling.framework import build_scheduler
from epp.tracing import RequestTracer, TracingConfigError
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from epp.k8s.runtime import KubernetesRuntime

log = logging.getLogger("epp")


class StartupError(Exception):
    pass


T = TypeVar("T")


@dataclass
class Runtime:
    settings: Settings
    table: EndpointTable
    health: HealthState
    director: Director
    servicer: ExtProcServicer
    registry: CollectorRegistry
    grpc_server: grpc.aio.Server
    health_server: grpc.aio.Server
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    watcher: EndpointsFileWatcher | None = None
    tracer: RequestTracer | None = None
    scrape_plane: ScrapePlane | None = None
    shared_memory: SharedMemory | None = None
    grpc_port: int = 0
    health_port: int = 0
    flow: FlowController[list[pb.ProcessingResponse]] | None = None
    kubernetes: KubernetesRuntime | None = None


async def _start_kubernetes(
    settings: Settings, table: EndpointTable, health: HealthState, director: Director
) -> KubernetesRuntime:
    """Kubernetes discovery (and leader election); imported here so standalone runs do not load the client."""
    from epp.k8s.client import KubeConfigError
    from epp.k8s.discovery import DiscoveryError
    from epp.k8s.pool import PoolSpecError
    from epp.k8s.runtime import start_kubernetes

    try:
        return await start_kubernetes(settings, table, health, director)
    except (KubeConfigError, DiscoveryError, PoolSpecError) as exc:
        raise StartupError(str(exc)) from None


async def start(settings: Settings) -> Runtime:
    """Build and start everything; returns once the servers listen (ports may be 0 = ephemeral)."""
    try:
        if settings.config_file:
            config = load_config_file(settings.config_file)
        elif settings.config_text:
            config = load_config_text(settings.config_text, "--config-text")
        else:
            config = default_config()
    except ConfigError as exc:
        raise StartupError("invalid EndpointPickerConfig:\n  " + "\n  ".join(exc.errors)) from None
    table, shared_memory = create_shared_table(settings.max_endpoints)
    try:
        return await _start_with(settings, config, table, shared_memory)
    except BaseException:
        shared_memory.unlink()  # the scrape process has not started, or stopped with the failure
        raise


async def _start_with(
    settings: Settings, config: EndpointPickerConfig, table: EndpointTable, shared_memory: SharedMemory
) -> Runtime:
    health = HealthState()
    scheduler = build_scheduler(config, table)
    flow_control = "flowControl" in config.feature_gates
    director = Director(
        table,
        scheduler,
        hooks=scheduler,
        subset_filter=not settings.disable_endpoint_subset_filter,
        saturation=scheduler.saturation,
        shed_sheddable=not flow_control,  # with flow control, saturation holds requests instead of shedding
        defer_hooks=True,  # the servicer runs them once the pick's response is written
        unreachable_after_s=float(settings.metrics_staleness_threshold),
    )
    parser = passthrough_parser if config.parser == "passthrough-parser" else openai_parser
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    observability = install_observability(registry, table, settings)
    metrics = observability.request_metrics
    tracer: RequestTracer | None = None
    if settings.tracing:
        try:
            tracer = RequestTracer.from_env()
        except TracingConfigError as exc:
            raise StartupError(str(exc)) from None
    flow: FlowController[list[pb.ProcessingResponse]] | None = None
    if flow_control:
        flow = FlowController(config.flow_control, lambda: scheduler.saturation(table.live_slots()))
        flow_metrics = FlowControlMetrics(flow.queue, flow.saturation, observability.pool_name)
        flow.on_outcome = flow_metrics.record
        registry.register(flow_metrics)
        director.on_release = flow.notify
    max_body = settings.max_request_body_bytes
    servicer = ExtProcServicer(
        lambda: ExtProcStream(
            director, parser, metrics, tracer=tracer, flow_control=flow_control, max_body_bytes=max_body
        ),
        flow,
        idle_timeout=settings.stream_idle_timeout,
    )
    observability.watch_streams(servicer)

    options = [
        ("grpc.max_receive_message_length", settings.grpc_max_recv_msg_size),
        ("grpc.max_send_message_length", settings.grpc_max_send_msg_size),
    ]
    server = grpc.aio.server(options=options)
    pb_grpc.add_ExternalProcessorServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    if settings.health_checking:
        add_health(server, health)
    address = f"[::]:{settings.grpc_port}"
    if settings.secure_serving:
        try:
            credentials = tls.server_credentials(settings.cert_path, settings.enable_cert_reload)
        except (OSError, ValueError) as exc:
            raise StartupError(str(exc)) from None
        grpc_port = _bind("--grpc-port", settings.grpc_port, lambda: server.add_secure_port(address, credentials))
    else:
        grpc_port = _bind("--grpc-port", settings.grpc_port, lambda: server.add_insecure_port(address))
    health_server = grpc.aio.server()
    add_health(health_server, health)
    health_port = _bind(
        "--grpc-health-port",
        settings.grpc_health_port,
        lambda: health_server.add_insecure_port(f"[::]:{settings.grpc_health_port}"),
    )
    # bound now, with the other ports, so a taken port fails before anything else has started
    metrics_server, _ = _bind(
        "--metrics-port", settings.metrics_port, lambda: start_metrics_server(settings.metrics_port, registry)
    )
    try:
        runtime = Runtime(settings, table, health, director, servicer, registry, server, health_server, tracer=tracer)
        runtime.grpc_port, runtime.health_port = grpc_port, health_port
        try:
            if settings.endpoints:
                endpoints = parse_endpoints_flag(settings.endpoints)
                check_capacity(endpoints, table.capacity, "--endpoints")
                table.replace_all(endpoints)
                health.synced = True
            elif settings.endpoints_file:
                runtime.watcher = EndpointsFileWatcher(Path(settings.endpoints_file), table)
                runtime.watcher.load_now()
                health.synced = True
                runtime.watcher.start()
            else:
                runtime.kubernetes = await _start_kubernetes(settings, table, health, director)
        except EndpointSpecError as exc:
            raise StartupError(str(exc)) from None

        runtime.shared_memory = shared_memory
        runtime.scrape_plane = ScrapePlane()
        source = MetricsDataSourceParams(
            scheme=settings.model_server_metrics_scheme,
            path=settings.model_server_metrics_path,
            insecure_skip_verify=settings.model_server_metrics_https_insecure_skip_verify,
        )
        extractor = CoreMetricsExtractorParams()
        for instance in config.plugins.values():  # a declared data source / extractor overrides the flags
            if instance.type == "metrics-data-source":
                source = instance.plugin.parameters
            elif instance.type == "core-metrics-extractor":
                extractor = instance.plugin.parameters
        runtime.scrape_plane.start(table, source, extractor, settings.refresh_metrics_interval)
        if flow is not None:
            flow.start()
            runtime.flow = flow
        await server.start()
        await health_server.start()
        log.info(
            "epp serving: ext_proc :%d (%s), health :%d, metrics :%d, %d endpoints",
            grpc_port,
            "TLS" if settings.secure_serving else "plaintext",
            health_port,
            settings.metrics_port,
            len(table),
        )
        return runtime
    except BaseException:
        metrics_server.shutdown()
        metrics_server.server_close()
        raise


def _bind(flag: str, port: int, bind: Callable[[], T]) -> T:
    try:
        return bind()
    except (OSError, RuntimeError) as exc:  # grpc raises RuntimeError("Failed to bind ...")
        raise StartupError(
            f"{flag} {port}: cannot listen there ({exc}); another process holds the port: stop it or pick another"
        ) from None


async def hand_over(streams_total: Callable[[], int], limit_s: float, quiet_s: float = 1.0) -> float:
    """Once NOT_SERVING: keep taking ext_proc streams while the proxy still sends them (its health checks have
    not yet moved it to another replica or leader, or it has nowhere else to go), until none has arrived for
    `quiet_s` or `limit_s` passed; refusing them sooner fails those requests. Returns the seconds waited."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    last_total, last_change = streams_total(), started
    while loop.time() - started < limit_s and loop.time() - last_change < quiet_s:
        await asyncio.sleep(0.05)
        total = streams_total()
        if total != last_total:
            last_total, last_change = total, loop.time()
    waited = loop.time() - started
    log.info("hand-over: no new ext_proc stream for %.1fs after %.1fs; draining", quiet_s, waited)
    return waited


async def stop(runtime: Runtime) -> None:
    """Drain: health goes NOT_SERVING; new streams are still taken while the proxy sends them (hand_over),
    then refused, and in-flight ones get --drain-timeout. With leader election the lease is released first."""
    runtime.health.draining = True
    log.info("draining: %d ext_proc streams in flight", runtime.servicer.streams_in_flight)
    if runtime.kubernetes is not None:
        await runtime.kubernetes.release()  # a follower takes the lease now rather than when it expires
    servicer = runtime.servicer
    await hand_over(lambda: servicer.streams_total, runtime.settings.drain_timeout)
    if runtime.watcher is not None:
        await runtime.watcher.stop()
    await runtime.grpc_server.stop(grace=runtime.settings.drain_timeout)
    if runtime.flow is not None:
        await runtime.flow.stop()
    await runtime.health_server.stop(grace=None)
    if runtime.tracer is not None:
        runtime.tracer.shutdown()
    if runtime.kubernetes is not None:
        await runtime.kubernetes.stop()
    if runtime.scrape_plane is not None:
        await runtime.scrape_plane.stop()
    if runtime.shared_memory is not None:
        runtime.shared_memory.unlink()
    log.info("stopped")


async def serve(settings: Settings) -> None:
    runtime = await start(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.stopping.set)
    await runtime.stopping.wait()
    await stop(runtime)


def run(settings: Settings) -> int:
    epp_logging.configure(settings.v, settings.zap_encoder)
    try:
        uvloop.run(serve(settings))
    except StartupError as exc:
        log.error("%s", exc)
        print(f"epp: {exc}", flush=True, file=sys.stderr)
        return 1
    return 0
