"""Tracing through real Envoy: spans exported over OTLP/gRPC to a collector in the test, W3C context
continued from the client and carried to the model server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from epp.devstack.envoy import EnvoyProcess, free_port, render_bootstrap
from epp.devstack.processes import EppProcess
from tests.e2e.backends import EchoBackends
from tests.e2e.conftest import endpoints_arg
from tests.e2e.http import post

pytestmark = pytest.mark.e2e


class Collector(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.spans: list[Any] = []

    def Export(self, request: Any, context: Any) -> Any:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(0)


def test_spans_and_w3c_propagation(collector: tuple[Collector, int], backends: EchoBackends) -> None:
    servicer, port = collector
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_TRACES_SAMPLER_ARG": "1.0",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "epp-under-test",
    }
    epp = EppProcess(["--endpoints", endpoints_arg(backends)], env=env)
    epp.start()
    try:
        with EnvoyProcess(render_bootstrap("envoy", free_port(), free_port(), epp.grpc_port)) as envoy:
            trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
            parent = "00f067aa0ba902b7"
            backends.received.clear()
            headers = {"traceparent": f"00-{trace_id}-{parent}-01"}
            status, _, _ = post(envoy.listener_port, "/v1/completions", {"model": "m", "prompt": "p"}, headers)
            assert status == 200
            upstream = backends.received[-1].headers["traceparent"]
            assert upstream.startswith(f"00-{trace_id}-") and upstream.split("-")[2] != parent
            deadline = time.monotonic() + 10
            while len(servicer.spans) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        epp.stop()
    spans = {span.name: span for span in servicer.spans if span.trace_id.hex() == trace_id}
    root, child = spans["gateway.request"], spans["gateway.request_orchestration"]
    assert root.parent_span_id.hex() == parent
    assert root.kind == 2  # SPAN_KIND_SERVER
    assert child.parent_span_id == root.span_id
    attributes = {a.key: a.value for a in child.attributes}
    assert attributes["target_model"].string_value == "m"
    assert attributes["request_prio"].int_value == 0
    assert upstream.split("-")[2] == root.span_id.hex()


def test_unsupported_sampler_fails_loudly(backends: EchoBackends) -> None:
    epp = EppProcess(["--endpoints", endpoints_arg(backends)], env={"OTEL_TRACES_SAMPLER": "always_on"})
    with pytest.raises(RuntimeError, match="OTEL_TRACES_SAMPLER='always_on' is not supported"):
        epp.start()
    epp.stop()
