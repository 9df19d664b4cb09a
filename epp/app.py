"""Wiring and lifecycle of the EPP process: start, ready, drain, stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, disable_created_metrics

from epp.config.datalayer import NO_OP_GATES, flag_conflicts
from epp.config.schema import (
    ConfigError,
    EndpointPickerConfig,
    default_config,
    load_config_file,
    load_config_text,
)
from epp.datalayer.params import MetricsDataSourceParams
from epp.datalayer.scraper import ScrapePlane, create_shared_table
from epp.datastore.table import EndpointTable
from epp.director import Director
from epp.discovery.static import EndpointsFileWatcher, EndpointSpecError, check_capacity, parse_endpoints_flag
from epp.extproc.core import ExtProcStream
from epp.extproc.observing import ObservingStream, ResponseWatch
from epp.extproc.servicer import ExtProcServicer
from epp.flowcontrol.controller import FlowController
from epp.health import HealthState, add_health
from epp.observability.debug import DebugPages, HoldsBlocks
from epp.observability.decisions import DecisionLog
from epp.observability.flowcontrol import FlowControlMetrics
from epp.observability.pool import PoolGauges
from epp.observability.server import server_tls_context, start_metrics_server
from epp.observability.wiring import install as install_observability
from epp.requests.parsers import openai_parser, passthrough_parser
from epp.scheduling.framework import build_scheduler
from epp.servers import StartupError, add_extproc_port, bind, extproc_server, run_server
from epp.servers import health_server as start_health_server
from epp.settings import Settings, flag_values
from epp.tracing import RequestTracer, TracingConfigError
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from epp.k8s.metrics_auth import TokenReviewGuard
    from epp.k8s.runtime import KubernetesRuntime
    from epp.shared.link import SharedState

log = logging.getLogger("epp")


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
    watcher: EndpointsFileWatcher | None = None
    tracer: RequestTracer | None = None
    scrape_plane: ScrapePlane | None = None
    shared_memory: SharedMemory | None = None
    grpc_port: int = 0
    health_port: int = 0
    flow: FlowController[list[pb.ProcessingResponse]] | None = None
    kubernetes: KubernetesRuntime | None = None
    shared: SharedState | None = None


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
    ignored = flag_conflicts(config.data_layer, {name.replace("_", "-") for name in settings.explicit})
    if ignored:
        raise StartupError("\n".join(ignored))
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
    if settings.debug_decisions > 0:
        director.decisions = DecisionLog(table, settings.debug_decisions)
    scheduler.trace = director.decisions is not None or settings.emit_endpoint_scores
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
    response_watch = ResponseWatch()
    servicer = ExtProcServicer(
        lambda: ExtProcStream(
            director,
            parser,
            metrics,
            tracer=tracer,
            flow_control=flow_control,
            max_body_bytes=max_body,
            emit_scores=settings.emit_endpoint_scores,
            watch=response_watch,
        ),
        flow,
        idle_timeout=settings.stream_idle_timeout,
        observing_stream=lambda: ObservingStream(response_watch),
    )
    observability.watch_streams(servicer)

    server = extproc_server(settings)
    pb_grpc.add_ExternalProcessorServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    if settings.health_checking:
        add_health(server, health)
    grpc_port = add_extproc_port(server, settings)
    health_server, health_port = start_health_server(settings, health)
    debug = DebugPages(
        table,
        director.decisions,
        observability.pool_name,
        float(settings.metrics_staleness_threshold),
        flag_values(settings),
        settings.explicit,
        config.describe(),
        [p for p in scheduler.plugins.values() if isinstance(p, HoldsBlocks)],
        source=_source_of(settings),
    )
    guard = _metrics_guard(settings)
    metrics_tls = None
    if settings.metrics_cert_dir:
        try:
            metrics_tls = server_tls_context(settings.metrics_cert_dir, settings.metrics_client_ca_file)
        except (OSError, ValueError) as exc:
            raise StartupError(str(exc)) from None
    # bound now, with the other ports, so a taken port fails before anything else has started
    metrics_server, _ = bind(
        "--metrics-port",
        settings.metrics_port,
        lambda: start_metrics_server(settings.metrics_port, registry, debug, guard, metrics_tls),
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
                if guard is not None:
                    guard.attach(runtime.kubernetes.api)
        except EndpointSpecError as exc:
            raise StartupError(str(exc)) from None

        runtime.shared_memory = shared_memory
        _start_data_layer(runtime, config, observability.pool)
        if flow is not None:
            flow.start()
            runtime.flow = flow
        if settings.shared_state:
            runtime.shared = _shared_state(settings, table, scheduler.plugins, observability.pool_name, registry)
        await server.start()
        await health_server.start()
        if runtime.shared is not None:
            await runtime.shared.start()
        log.info(
            "epp serving: ext_proc :%d (%s), health :%d, metrics and /debug :%d (%s), %d endpoints",
            grpc_port,
            "TLS" if settings.secure_serving else "plaintext",
            health_port,
            metrics_server.server_port,
            "https" if metrics_tls is not None else "http",
            len(table),
        )
        return runtime
    except BaseException:
        metrics_server.shutdown()
        metrics_server.server_close()
        raise


def _shared_state(
    settings: Settings, table: EndpointTable, plugins: dict[str, Any], pool_name: str, registry: CollectorRegistry
) -> SharedState:
    """Active-active sharing through Redis/Valkey (imported only when asked for)."""
    from epp.shared.link import SharedState
    from epp.shared.metrics import COLLECTOR, PeerLoadCollector
    from epp.shared.settings import SharedStateError, parse_shared_state

    try:
        store = parse_shared_state(settings.shared_state, settings.shared_state_password_file)
    except SharedStateError as exc:
        raise StartupError(str(exc)) from None
    scope = f"{settings.pool_namespace or 'default'}/{pool_name}"
    shared = SharedState(store, table, plugins, scope)
    registry.register(COLLECTOR)
    registry.register(PeerLoadCollector(shared.columns))
    return shared


def _source_of(settings: Settings) -> str:
    if settings.endpoints:
        return "--endpoints"
    if settings.endpoints_file:
        return f"--endpoints-file {settings.endpoints_file}"
    if settings.pool_name:
        return f"InferencePool {settings.pool_namespace}/{settings.pool_name}"
    return f"pods matching {settings.endpoint_selector} in {settings.pool_namespace}"


def _metrics_guard(settings: Settings) -> TokenReviewGuard | None:
    """What --metrics-endpoint-auth means for this process, said once at start-up."""
    kubernetes = bool(settings.pool_name or settings.endpoint_selector)
    if settings.metrics_endpoint_auth and kubernetes:
        from epp.k8s.metrics_auth import TokenReviewGuard

        log.info(
            "metrics port: /metrics and /debug need a bearer token allowed by the Kubernetes API "
            "(TokenReview, then SubjectAccessReview of the path with verb get)"
        )
        return TokenReviewGuard(asyncio.get_running_loop())
    if settings.metrics_client_ca_file:
        log.info("metrics port: clients need a certificate signed by %s", settings.metrics_client_ca_file)
    elif settings.metrics_endpoint_auth:
        log.warning(
            "metrics port: --metrics-endpoint-auth checks tokens with the Kubernetes API, which standalone "
            "discovery does not use: /metrics and /debug are served to anyone who reaches port %d. Give "
            "--metrics-endpoint-auth=false to say that is intended, or --metrics-cert-dir with "
            "--metrics-client-ca-file to require client certificates",
            settings.metrics_port,
        )
    else:
        log.info("metrics port: /metrics and /debug are served without authentication (--metrics-endpoint-auth=false)")
    return None


def _start_data_layer(runtime: Runtime, config: EndpointPickerConfig, pool: PoolGauges) -> None:
    """Scrape the model servers as the config's data layer says (or not at all)."""
    settings = runtime.settings
    for gate in config.feature_gates:
        if gate in NO_OP_GATES:
            log.warning("%s", NO_OP_GATES[gate])
    data_layer = config.data_layer
    if not data_layer.scrapes:
        log.warning(
            "model-server metrics are not scraped: the config's dataLayer section lists no source; scorers see "
            "only the load this EPP routed"
        )
        return
    flags_source = MetricsDataSourceParams(
        scheme=settings.model_server_metrics_scheme,
        path=settings.model_server_metrics_path,
        insecure_skip_verify=settings.model_server_metrics_https_insecure_skip_verify,
    )
    log.info("model-server metrics: %s", data_layer.mode.value)
    plane = runtime.scrape_plane = ScrapePlane()
    source = data_layer.source_or(flags_source)
    plane.start(runtime.table, source, data_layer.extractor, settings.refresh_metrics_interval)
    pool.scrape_errors_total = lambda: float(plane.errors_total)


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
    if runtime.shared is not None:
        await runtime.shared.stop()
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


def run(settings: Settings) -> int:
    return run_server("epp", settings, start, stop)
