"""Prometheus metrics with the reference EPP's names, types and labels (reference §8.1).

`RequestMetrics` is the core's StreamObserver. Label children are cached per (model, target, priority)
so a request costs a dict lookup and a few list increments (see epp/observability/fast.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from epp.director import Decision
from epp.errors import EppError
from epp.observability.fast import Distribution, FamiliesCollector, Family, Value
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
#: distinct (model, target, priority) label sets kept before new ones are counted under "other"
MAX_LABEL_SETS = 1000
OVERFLOW_LABEL = "other"


class RequestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.request_total = Family(
            "counter",
            "inference_objective_request_total",
            "Counter of inference objective requests broken out for each model and target model.",
            [*_MODEL_LABELS, "priority"],
        )
        self.request_error_total = Family(
            "counter",
            "inference_objective_request_error_total",
            "Counter of inference objective requests errors broken out for each model and target model.",
            [*_MODEL_LABELS, "error_code"],
        )
        self.request_duration = Family(
            "histogram",
            "inference_objective_request_duration_seconds",
            "Inference objective response latency distribution in seconds for each model and target model.",
            _MODEL_LABELS,
            _DURATION_BUCKETS,
        )
        self.request_sizes = Family(
            "histogram",
            "inference_objective_request_sizes",
            "Inference objective requests size distribution in bytes for each model and target model.",
            _MODEL_LABELS,
            _SIZE_BUCKETS,
        )
        self.response_sizes = Family(
            "histogram",
            "inference_objective_response_sizes",
            "Inference objective responses size distribution in bytes for each model and target model.",
            _MODEL_LABELS,
            _SIZE_BUCKETS,
        )
        self.input_tokens = Family(
            "histogram",
            "inference_objective_input_tokens",
            "Inference objective input token count distribution for requests in each model.",
            _MODEL_LABELS,
            _TOKEN_BUCKETS,
        )
        self.output_tokens = Family(
            "histogram",
            "inference_objective_output_tokens",
            "Inference objective output token count distribution for requests in each model.",
            _MODEL_LABELS,
            _TOKEN_BUCKETS,
        )
        self.running_requests = Family(
            "gauge",
            "inference_objective_running_requests",
            "Inference objective number of running requests in each model.",
            ["model_name"],
        )
        self.families = [
            self.request_total,
            self.request_error_total,
            self.request_duration,
            self.request_sizes,
            self.response_sizes,
            self.input_tokens,
            self.output_tokens,
            self.running_requests,
        ]
        registry.register(FamiliesCollector(self.families))
        self._children: dict[tuple[str, str, int], _Children] = {}

    def _for(self, model: str, target: str, priority: int) -> _Children:
        """Label children of one (model, target, priority), created once; label values are capped."""
        key = (model, target, priority)
        children = self._children.get(key)
        if children is None:
            if len(self._children) >= MAX_LABEL_SETS:
                key = (OVERFLOW_LABEL, OVERFLOW_LABEL, priority)
                children = self._children.get(key)
            if children is None:
                model, target = key[0], key[1]
                children = _Children(
                    total=self.request_total.value(model, target, str(priority)),
                    sizes=self.request_sizes.distribution(model, target),
                    running=self.running_requests.value(model),
                    duration=self.request_duration.distribution(model, target),
                    response_sizes=self.response_sizes.distribution(model, target),
                    input_tokens=self.input_tokens.distribution(model, target),
                    output_tokens=self.output_tokens.distribution(model, target),
                )
                self._children[key] = children
        return children

    def picked(self, decision: Decision) -> None:
        request = decision.request
        children = self._for(request.model, request.target_model, request.priority)
        children.total.value += 1.0
        children.sizes.observe(request.body_size)
        children.running.value += 1.0

    def failed(self, error: EppError, model: str, target_model: str) -> None:
        if len(self._children) >= MAX_LABEL_SETS:
            model = target_model = OVERFLOW_LABEL
        self.request_error_total.value(model, target_model, error.code).value += 1.0

    def completed(self, decision: Decision, usage: Usage | None, response_bytes: int, seconds: float) -> None:
        request = decision.request
        children = self._for(request.model, request.target_model, request.priority)
        children.running.value -= 1.0
        children.duration.observe(seconds)
        children.response_sizes.observe(response_bytes)
        if usage is not None:
            children.input_tokens.observe(usage.prompt_tokens)
            children.output_tokens.observe(usage.completion_tokens)


@dataclass(frozen=True, slots=True)
class _Children:
    total: Value
    sizes: Distribution
    running: Value
    duration: Distribution
    response_sizes: Distribution
    input_tokens: Distribution
    output_tokens: Distribution
