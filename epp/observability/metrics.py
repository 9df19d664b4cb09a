"""Prometheus metrics with the reference EPP's names, types and labels (reference §8.1).

`RequestMetrics` is the core's StreamObserver. Label children are cached per (model, target) so a
request costs a dict lookup and a few increments.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from epp.director import Decision
from epp.errors import EppError
from epp.scheduling.types import Usage

_DURATION_BUCKETS = (
    0.005,
    0.025,
    0.05,
    0.1,
    0.2,
    0.4,
    0.6,
    0.8,
    1.0,
    1.25,
    1.5,
    2,
    3,
    4,
    5,
    6,
    8,
    10,
    15,
    20,
    30,
    45,
    60,
    120,
    180,
    240,
    300,
    360,
    480,
    600,
    900,
    1200,
    1800,
    2700,
    3600,
)
_SIZE_BUCKETS = (*tuple(float(64 * 4**i) for i in range(13)), float(2**30))
_TOKEN_BUCKETS = (
    1,
    8,
    16,
    32,
    64,
    128,
    256,
    512,
    1024,
    2048,
    4096,
    8192,
    16384,
    32778,
    65536,
    131072,
    262144,
    524288,
    1048576,
)
_MODEL_LABELS = ("model_name", "target_model_name")


class RequestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.request_total = Counter(
            "inference_objective_request_total",
            "Counter of inference objective requests broken out for each model and target model.",
            [*_MODEL_LABELS, "priority"],
            registry=registry,
        )
        self.request_error_total = Counter(
            "inference_objective_request_error_total",
            "Counter of inference objective requests errors broken out for each model and target model.",
            [*_MODEL_LABELS, "error_code"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "inference_objective_request_duration_seconds",
            "Inference objective response latency distribution in seconds for each model and target model.",
            _MODEL_LABELS,
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.request_sizes = Histogram(
            "inference_objective_request_sizes",
            "Inference objective requests size distribution in bytes for each model and target model.",
            _MODEL_LABELS,
            buckets=_SIZE_BUCKETS,
            registry=registry,
        )
        self.response_sizes = Histogram(
            "inference_objective_response_sizes",
            "Inference objective responses size distribution in bytes for each model and target model.",
            _MODEL_LABELS,
            buckets=_SIZE_BUCKETS,
            registry=registry,
        )
        self.input_tokens = Histogram(
            "inference_objective_input_tokens",
            "Inference objective input token count distribution for requests in each model.",
            _MODEL_LABELS,
            buckets=_TOKEN_BUCKETS,
            registry=registry,
        )
        self.output_tokens = Histogram(
            "inference_objective_output_tokens",
            "Inference objective output token count distribution for requests in each model.",
            _MODEL_LABELS,
            buckets=_TOKEN_BUCKETS,
            registry=registry,
        )
        self.running_requests = Gauge(
            "inference_objective_running_requests",
            "Inference objective number of running requests in each model.",
            ["model_name"],
            registry=registry,
        )

    def picked(self, decision: Decision) -> None:
        request = decision.request
        labels = (request.model, request.target_model)
        self.request_total.labels(*labels, str(request.priority)).inc()
        self.request_sizes.labels(*labels).observe(request.body_size)
        self.running_requests.labels(request.model).inc()

    def failed(self, error: EppError, model: str, target_model: str) -> None:
        self.request_error_total.labels(model, target_model, error.code).inc()

    def completed(self, decision: Decision, usage: Usage | None, response_bytes: int, seconds: float) -> None:
        request = decision.request
        labels = (request.model, request.target_model)
        self.running_requests.labels(request.model).dec()
        self.request_duration.labels(*labels).observe(seconds)
        self.response_sizes.labels(*labels).observe(response_bytes)
        if usage is not None:
            self.input_tokens.labels(*labels).observe(usage.prompt_tokens)
            self.output_tokens.labels(*labels).observe(usage.completion_tokens)
