"""OpenTelemetry tracing of requests, configured by the reference's OTEL_* variables.

Spans: `gateway.request` (root per ext_proc stream, kind SERVER, continuing a W3C `traceparent` from the
request when there is one) and its child `gateway.request_orchestration` (attributes `target_model`,
`request_prio`). The trace context (traceparent, tracestate, baggage) is injected into the request sent
upstream. Sampling is `parentbased_traceidratio` (OTEL_TRACES_SAMPLER_ARG, default 0.1): the decision
for a request without a parent is taken before any OpenTelemetry object is made, so unsampled requests
cost a random draw.

Environment: OTEL_SERVICE_NAME (default `gateway-api-inference-extension/epp`), OTEL_TRACES_EXPORTER
(`console` default, pretty-printed spans on stdout; `otlp` gRPC to OTEL_EXPORTER_OTLP_ENDPOINT, default
http://localhost:4317; `none`), OTEL_TRACES_SAMPLER (only `parentbased_traceidratio`),
OTEL_TRACES_SAMPLER_ARG, OTEL_RESOURCE_ATTRIBUTES.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

DEFAULT_SERVICE_NAME = "gateway-api-inference-extension/epp"
_PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


class TracingConfigError(ValueError):
    pass


def _ratio_from_env(environ: Mapping[str, str]) -> float:
    sampler = environ.get("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    if sampler != "parentbased_traceidratio":
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER={sampler!r} is not supported; use parentbased_traceidratio")
    text = environ.get("OTEL_TRACES_SAMPLER_ARG", "0.1")
    try:
        ratio = float(text)
    except ValueError:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG={text!r} is not a number between 0 and 1") from None
    if not 0.0 <= ratio <= 1.0:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG={text!r} is not a number between 0 and 1")
    return ratio


def _exporter_from_env(environ: Mapping[str, str]) -> SpanExporter | None:
    name = environ.get("OTEL_TRACES_EXPORTER", "console")
    if name == "none":
        return None
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        endpoint = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317")
        return OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    raise TracingConfigError(f"OTEL_TRACES_EXPORTER={name!r} is not supported; use console, otlp or none")


class RequestTracer:
    def __init__(self, provider: TracerProvider, ratio: float) -> None:
        self.provider = provider
        self.ratio = ratio
        self._tracer = provider.get_tracer("epp")
        self._random = random.random

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RequestTracer:
        environ = os.environ if environ is None else environ
        ratio = _ratio_from_env(environ)
        exporter = _exporter_from_env(environ)
        resource = Resource.create({SERVICE_NAME: environ.get("OTEL_SERVICE_NAME", DEFAULT_SERVICE_NAME)})
        provider = TracerProvider(resource=resource, sampler=ParentBasedTraceIdRatio(ratio))
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider, ratio)

    def begin(self, headers: Mapping[str, str]) -> RequestTrace | None:
        """Start `gateway.request` if this request is traced; None (and no cost) when it is not."""
        traceparent = headers.get("traceparent")
        if traceparent is None:
            if self._random() >= self.ratio:
                return None
            parent = None
        else:
            if traceparent.endswith("-00"):  # the caller did not sample it: parent-based says no
                return None
            parent = _PROPAGATOR.extract(headers)
        span = self._tracer.start_span("gateway.request", context=parent, kind=trace.SpanKind.SERVER)
        return RequestTrace(self._tracer, span)

    def shutdown(self) -> None:
        self.provider.shutdown()


class RequestTrace:
    __slots__ = ("_orchestration", "_span", "_tracer")

    def __init__(self, tracer: trace.Tracer, span: trace.Span) -> None:
        self._tracer = tracer
        self._span = span
        self._orchestration: trace.Span | None = None

    def start_orchestration(self) -> None:
        context = trace.set_span_in_context(self._span)
        self._orchestration = self._tracer.start_span("gateway.request_orchestration", context=context)

    def end_orchestration(self, target_model: str, priority: int, error: str | None = None) -> dict[str, str]:
        """Close the orchestration span; returns the headers that carry the trace upstream."""
        span = self._orchestration
        if span is None:
            return {}
        span.set_attribute("target_model", target_model)
        span.set_attribute("request_prio", priority)
        if error is not None:
            span.set_status(trace.Status(trace.StatusCode.ERROR, error))
        span.end()
        self._orchestration = None
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(self._span))
        return carrier

    def end(self, error: str | None = None, attributes: Mapping[str, Any] | None = None) -> None:
        if self._orchestration is not None:
            self._orchestration.end()
            self._orchestration = None
        if attributes:
            self._span.set_attributes(dict(attributes))
        if error is not None:
            self._span.set_status(trace.Status(trace.StatusCode.ERROR, error))
        self._span.end()
