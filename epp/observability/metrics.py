"""Per-request Prometheus metrics with the reference EPP's names, types, labels and buckets (§8.1).

`RequestMetrics` is the protocol core's StreamObserver. Label children are resolved once per
(model, target model, priority) and cached, so a request costs a dict lookup and a few list
increments (see epp/observability/families.py). Every `inference_objective_*` family is also exported
under its pre-v1.1 `inference_model_*` name (summed over `priority` where the old name had no such
label) at scrape time, so existing alert rules and dashboards work with no extra per-request cost.

Label cardinality and size are bounded: after `MAX_LABEL_SETS` distinct label sets new model names,
and model names longer than `families.MAX_LABEL_VALUE` characters at any time (a client chooses them), are
counted under `"other"`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from epp.director import Decision
from epp.errors import EppError
from epp.observability.families import Alias, Distribution, FamiliesCollector, Family, Value, too_long
from epp.scheduling.types import Usage

#: request latency and TTFT buckets (5 ms … 1 h), as the reference
DURATION_BUCKETS = (
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 45, 60,
    120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600,
)  # fmt: skip
#: request size buckets: powers of two from 64 B to 1 GiB
REQUEST_SIZE_BUCKETS = tuple(float(2**i) for i in range(6, 31))
#: response size buckets (the reference's, including its 32778)
RESPONSE_SIZE_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536)
INPUT_TOKEN_BUCKETS = (
    1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536, 131072, 262144, 524288, 1048576,
)  # fmt: skip
OUTPUT_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
NTPOT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
#: EPP overhead per request (10 µs … 1 s)
PROCESSING_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip

MODEL_LABELS = ("model_name", "target_model_name")
#: distinct label sets kept per family group before new model names are counted under "other"
MAX_LABEL_SETS = 1000
OVERFLOW_LABEL = "other"

OBJECTIVE = "inference_objective_"
LEGACY = "inference_model_"


def _legacy(name: str, labels: tuple[str, ...] | None = None) -> tuple[Alias, ...]:
    return (Alias(LEGACY + name, labels),)


class RequestMetrics:
    """The `inference_objective_*` families (plus legacy names) and EPP overhead histograms."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.request_total = Family(
            "counter",
            OBJECTIVE + "request_total",
            "Counter of inference objective requests broken out for each model and target model.",
            [*MODEL_LABELS, "priority"],
            aliases=_legacy("request_total", MODEL_LABELS),
        )
        self.request_error_total = Family(
            "counter",
            OBJECTIVE + "request_error_total",
            "Counter of inference objective requests errors broken out for each model and target model.",
            [*MODEL_LABELS, "error_code"],
            aliases=_legacy("request_error_total"),
        )
        self.request_duration = self._histogram(
            "request_duration_seconds",
            "Inference objective response latency distribution in seconds for each model and target model.",
            DURATION_BUCKETS,
        )
        self.request_sizes = self._histogram(
            "request_sizes",
            "Inference objective requests size distribution in bytes for each model and target model.",
            REQUEST_SIZE_BUCKETS,
        )
        self.response_sizes = self._histogram(
            "response_sizes",
            "Inference objective responses size distribution in bytes for each model and target model.",
            RESPONSE_SIZE_BUCKETS,
        )
        self.input_tokens = self._histogram(
            "input_tokens",
            "Inference objective input token count distribution for requests in each model.",
            INPUT_TOKEN_BUCKETS,
        )
        self.output_tokens = self._histogram(
            "output_tokens",
            "Inference objective output token count distribution for requests in each model.",
            OUTPUT_TOKEN_BUCKETS,
        )
        self.prompt_cached_tokens = self._histogram(
            "prompt_cached_tokens",
            "Inference objective prompt cached token count distribution for requests in each model.",
            INPUT_TOKEN_BUCKETS,
            legacy=False,
        )
        self.running_requests = Family(
            "gauge",
            OBJECTIVE + "running_requests",
            "Inference objective number of running requests in each model.",
            ["model_name"],
            aliases=_legacy("running_requests"),
        )
        self.ntpot = self._histogram(
            "normalized_time_per_output_token_seconds",
            "Inference objective latency divided by number of output tokens in seconds for each model and target"
            " model.",
            NTPOT_BUCKETS,
        )
        self.ttft = self._histogram(
            "request_ttft_seconds",
            "Inference model TTFT distribution in seconds for each model and target model (streamed responses: "
            "from the request's first byte at the EPP to the first response body chunk).",
            DURATION_BUCKETS,
            legacy=False,
        )
        self.request_processing = Family(
            "histogram",
            "inference_extension_request_processing_duration_seconds",
            "Time the EPP spent processing the request phase of one stream (parse, admission, scheduling, "
            "building responses), summed over the stream's request messages.",
            buckets=PROCESSING_BUCKETS,
        )
        self.response_processing = Family(
            "histogram",
            "inference_extension_response_processing_duration_seconds",
            "Time the EPP spent processing the response phase of one stream (usage parsing, model-name "
            "rewrite, completion hooks), summed over the stream's response messages.",
            buckets=PROCESSING_BUCKETS,
        )
        self._request_processing = self.request_processing.distribution()
        self._response_processing = self.response_processing.distribution()
        self.families = [
            self.request_total,
            self.request_error_total,
            self.request_duration,
            self.request_sizes,
            self.response_sizes,
            self.input_tokens,
            self.output_tokens,
            self.prompt_cached_tokens,
            self.running_requests,
            self.ntpot,
            self.ttft,
            self.request_processing,
            self.response_processing,
        ]
        registry.register(FamiliesCollector(self.families))
        self._children: dict[tuple[str, str, int], _Children] = {}
        self._errors: dict[tuple[str, str, str], Value] = {}

    def _histogram(self, name: str, documentation: str, buckets: tuple[float, ...], legacy: bool = True) -> Family:
        aliases = _legacy(name) if legacy else ()
        return Family("histogram", OBJECTIVE + name, documentation, MODEL_LABELS, buckets, aliases)

    def _for(self, model: str, target: str, priority: int) -> _Children:
        """Label children of one (model, target, priority), created once; label values are capped."""
        key = (model, target, priority)
        children = self._children.get(key)
        if children is None:
            if len(self._children) >= MAX_LABEL_SETS or too_long(model, target):
                key = (OVERFLOW_LABEL, OVERFLOW_LABEL, priority)
                children = self._children.get(key)
            if children is None:
                model, target = key[0], key[1]
                children = _Children(
                    total=self.request_total.value(model, target, str(priority)),
                    sizes=self.request_sizes.distribution(model, target),
                    # the reference does not count requests without a model name as running
                    running=self.running_requests.value(model) if model else Value(),
                    duration=self.request_duration.distribution(model, target),
                    response_sizes=self.response_sizes.distribution(model, target),
                    input_tokens=self.input_tokens.distribution(model, target),
                    output_tokens=self.output_tokens.distribution(model, target),
                    cached_tokens=self.prompt_cached_tokens.distribution(model, target),
                    ntpot=self.ntpot.distribution(model, target),
                    ttft=self.ttft.distribution(model, target),
                )
                self._children[key] = children
        return children

    # --- StreamObserver ---------------------------------------------------------------------

    def picked(self, decision: Decision) -> None:
        request = decision.request
        children = self._for(request.model, request.target_model, request.priority)
        children.total.value += 1.0
        children.sizes.observe(request.body_size)
        children.running.value += 1.0

    def failed(self, error: EppError, model: str, target_model: str) -> None:
        key = (model, target_model, error.code)
        counter = self._errors.get(key)
        if counter is None:
            if len(self._errors) >= MAX_LABEL_SETS or too_long(model, target_model):
                key = (OVERFLOW_LABEL, OVERFLOW_LABEL, error.code)
            counter = self._errors[key] = self.request_error_total.value(*key)
        counter.value += 1.0

    def first_response_chunk(self, decision: Decision, seconds: float) -> None:
        """A streamed (SSE) response's first body chunk arrived `seconds` after the request started."""
        request = decision.request
        self._for(request.model, request.target_model, request.priority).ttft.observe(seconds)

    def completed(self, decision: Decision, usage: Usage | None, response_bytes: int, seconds: float) -> None:
        request = decision.request
        children = self._for(request.model, request.target_model, request.priority)
        children.running.value -= 1.0
        children.duration.observe(seconds)
        children.response_sizes.observe(response_bytes)
        if usage is not None:
            if usage.prompt_tokens > 0:
                children.input_tokens.observe(usage.prompt_tokens)
            output = usage.completion_tokens
            if output > 0:
                children.output_tokens.observe(output)
                children.ntpot.observe(seconds / output)
            children.cached_tokens.observe(usage.cached_tokens)

    def processing(self, request_seconds: float, response_seconds: float) -> None:
        """The stream ended; the EPP spent these many seconds on its request and response messages."""
        self._request_processing.observe(request_seconds)
        if response_seconds > 0.0:
            self._response_processing.observe(response_seconds)


@dataclass(frozen=True, slots=True)
class _Children:
    total: Value
    sizes: Distribution
    running: Value
    duration: Distribution
    response_sizes: Distribution
    input_tokens: Distribution
    output_tokens: Distribution
    cached_tokens: Distribution
    ntpot: Distribution
    ttft: Distribution
