"""`inference_extension_*` metrics: scheduler and plugin latency, prefix index, build info, rewrites.

These are recorded from deep inside the scheduler and plugins, which are built from configuration
without a handle on the metrics registry, so (like the reference) they live in one process-wide
`ExtensionMetrics` instance, `EXTENSION`; `install()` registers it with the app's registry. Recording
is as cheap as the request metrics: callers on the hot path should resolve a child once, e.g.

    timer = plugin_duration("Scorer", "prefix-cache-scorer", "prefix")   # at plugin construction
    ...
    timer.observe(elapsed_seconds)                                          # per call
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from importlib import metadata

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.observability.families import Alias, Distribution, FamiliesCollector, Family, too_long

LATENCY_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
HIT_RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
HIT_BYTES_BUCKETS = (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
ERROR_RATIO_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0)
PREFIX = "inference_extension_"
#: distinct label sets kept per counter (rewrites, scheduler attempts) before new ones count under "other"
MAX_REWRITE_LABEL_SETS = 1000


class ExtensionMetrics:
    def __init__(self) -> None:
        self.scheduler_e2e = Family(
            "histogram",
            PREFIX + "scheduler_e2e_duration_seconds",
            "End-to-end scheduling latency distribution in seconds.",
            buckets=LATENCY_BUCKETS,
        )
        self.plugin_duration = Family(
            "histogram",
            PREFIX + "plugin_duration_seconds",
            "Plugin processing latency distribution in seconds for each extension point, plugin type and plugin name.",
            ["extension_point", "plugin_type", "plugin_name"],
            LATENCY_BUCKETS,
            aliases=(Alias(PREFIX + "scheduler_plugin_duration_seconds", ("plugin_type", "plugin_name")),),
        )
        self.scheduler_attempts = Family(
            "counter",
            PREFIX + "scheduler_attempts_total",
            "Number of scheduling attempts by outcome, target model and picked endpoint.",
            ["status", "target_model_name", "pod_name", "namespace", "port"],
        )
        self.prefix_indexer_size = Family(
            "gauge", PREFIX + "prefix_indexer_size", "Size of the prefix indexer (number of cached blocks)."
        )
        self.prefix_hit_ratio = Family(
            "histogram",
            PREFIX + "prefix_indexer_hit_ratio",
            "Ratio of prefix length matched to total prefix length in the cache lookup.",
            buckets=HIT_RATIO_BUCKETS,
        )
        self.prefix_hit_bytes = Family(
            "histogram",
            PREFIX + "prefix_indexer_hit_bytes",
            "Length of the prefix match in number of bytes in the cache lookup.",
            buckets=HIT_BYTES_BUCKETS,
        )
        self.ttft_prediction_error = Family(
            "histogram",
            PREFIX + "ttft_prediction_error_ratio",
            "|predicted - observed| / observed time to first token of streamed requests, as the "
            "predicted-ttft-producer predicted it at the pick and the EPP observed it (first response chunk).",
            buckets=ERROR_RATIO_BUCKETS,
        )
        self.info = Family(
            "gauge",
            PREFIX + "info",
            "General information of the current build of Inference Extension.",
            ["commit", "build_ref"],
        )
        self.model_rewrite_decisions = Family(
            "counter",
            PREFIX + "model_rewrite_decisions_total",
            "Number of requests whose model name an InferenceModelRewrite rule changed.",
            ["model_rewrite_name", "model_name", "target_model"],
        )
        self.model_rewrite_target_unavailable = Family(
            "gauge",
            PREFIX + "model_rewrite_target_unavailable",
            "1 while a model rewrite target gets no traffic because none of its endpoints is ready with fresh "
            "metrics and another target of the rule can serve; 0 once it can serve again.",
            ["model_rewrite_name", "target_model"],
        )
        self.families = [
            self.scheduler_e2e,
            self.plugin_duration,
            self.scheduler_attempts,
            self.prefix_indexer_size,
            self.prefix_hit_ratio,
            self.prefix_hit_bytes,
            self.ttft_prediction_error,
            self.info,
            self.model_rewrite_decisions,
            self.model_rewrite_target_unavailable,
        ]
        self.collector = FamiliesCollector(self.families)
        self._scheduler_e2e = self.scheduler_e2e.distribution()
        self._indexer_size = self.prefix_indexer_size.value()
        self._hit_ratio = self.prefix_hit_ratio.distribution()
        self._hit_bytes = self.prefix_hit_bytes.distribution()
        self._ttft_error = self.ttft_prediction_error.distribution()

    def reset(self) -> None:
        """Forget everything recorded (tests); children handed out before are detached."""
        for family in self.families:
            family.clear()
        self._scheduler_e2e = self.scheduler_e2e.distribution()
        self._indexer_size = self.prefix_indexer_size.value()
        self._hit_ratio = self.prefix_hit_ratio.distribution()
        self._hit_bytes = self.prefix_hit_bytes.distribution()
        self._ttft_error = self.ttft_prediction_error.distribution()


EXTENSION = ExtensionMetrics()


def record_scheduler_e2e(seconds: float) -> None:
    EXTENSION._scheduler_e2e.observe(seconds)


def plugin_duration(extension_point: str, plugin_type: str, plugin_name: str) -> Distribution:
    """The histogram child of one plugin at one extension point; keep it and call `.observe(seconds)`."""
    return EXTENSION.plugin_duration.distribution(extension_point, plugin_type, plugin_name)


def record_plugin_duration(extension_point: str, plugin_type: str, plugin_name: str, seconds: float) -> None:
    plugin_duration(extension_point, plugin_type, plugin_name).observe(seconds)


def record_scheduler_attempt(
    status: str, target_model: str, pod_name: str = "", namespace: str = "", port: str = ""
) -> None:
    """One scheduling attempt: status "success" (with the picked endpoint) or "failure" (endpoint labels empty)."""
    family = EXTENSION.scheduler_attempts
    key = (status, target_model, pod_name, namespace, port)
    if key not in family.children and (len(family.children) >= MAX_REWRITE_LABEL_SETS or too_long(target_model)):
        key = (status, "other", "other", "other", "other")
    family.value(*key).value += 1.0


def set_prefix_indexer_size(size: float) -> None:
    EXTENSION._indexer_size.value = float(size)


def record_prefix_match(matched_bytes: int, total_bytes: int) -> None:
    """One prefix-index lookup: `matched_bytes` of the request's `total_bytes` prefix were cached."""
    EXTENSION._hit_bytes.observe(matched_bytes)
    if total_bytes > 0:
        EXTENSION._hit_ratio.observe(matched_bytes / total_bytes)


def record_ttft_prediction(error_ratio: float) -> None:
    """One streamed request's |predicted - observed| / observed TTFT."""
    EXTENSION._ttft_error.observe(error_ratio)


def record_model_rewrite(rewrite_name: str, model: str, target_model: str) -> None:
    family = EXTENSION.model_rewrite_decisions
    key = (rewrite_name, model, target_model)
    if key not in family.children and (len(family.children) >= MAX_REWRITE_LABEL_SETS or too_long(model, target_model)):
        key = (rewrite_name, "other", "other")
    family.value(*key).value += 1.0


def set_rewrite_target_unavailable(rewrite_name: str, target_model: str, unavailable: bool) -> None:
    """A rewrite target stopped (True) or resumed (False) receiving traffic because of its endpoints' health."""
    EXTENSION.model_rewrite_target_unavailable.value(rewrite_name, target_model).value = 1.0 if unavailable else 0.0


def set_build_info(commit: str | None = None, build_ref: str | None = None) -> None:
    """`inference_extension_info{commit, build_ref} 1`; defaults from EPP_COMMIT / EPP_BUILD_REF or the package."""
    if commit is None:
        commit = os.environ.get("EPP_COMMIT", "unknown")
    if build_ref is None:
        build_ref = os.environ.get("EPP_BUILD_REF") or _package_version()
    EXTENSION.info.clear()
    EXTENSION.info.value(commit, build_ref).value = 1.0


def _package_version() -> str:
    try:
        return "v" + metadata.version("epp")
    except metadata.PackageNotFoundError:
        return "unknown"


class InflightChargeCollector(Collector):
    """What this EPP has charged to endpoints and not yet released (requests, tokens), summed over the pool
    when /metrics is scraped: 0 whenever no request is open, so a leaked charge shows as a stuck value."""

    def __init__(self, requests: Callable[[], float], tokens: Callable[[], float]) -> None:
        self._requests = requests
        self._tokens = tokens

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            PREFIX + "endpoint_inflight_requests",
            "Requests this EPP routed to the pool's endpoints that have not finished (the load it charges).",
            self._requests(),
        )
        yield GaugeMetricFamily(
            PREFIX + "endpoint_inflight_tokens",
            "Tokens of requests this EPP routed to the pool's endpoints that have not finished.",
            self._tokens(),
        )


class StreamsCollector(Collector):
    """ext_proc streams in flight and total, read from the servicer's counters when /metrics is scraped."""

    def __init__(self, in_flight: Callable[[], float], total: Callable[[], float]) -> None:
        self._in_flight = in_flight
        self._total = total

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            PREFIX + "extproc_streams_in_flight", "ext_proc streams (HTTP requests) open right now.", self._in_flight()
        )
        yield CounterMetricFamily(
            PREFIX + "extproc_streams", "ext_proc streams (HTTP requests) opened since start.", self._total()
        )
