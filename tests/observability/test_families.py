"""Metric names, types, labels and buckets; legacy dual-emission; cardinality cap; pool gauges."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from epp.datastore.table import Endpoint, EndpointTable
from epp.errors import EppError
from epp.observability import extension, families
from epp.observability import metrics as metrics_module
from epp.observability.metrics import RequestMetrics
from epp.observability.pool import PoolGauges
from epp.observability.wiring import install
from epp.scheduling.types import Usage
from epp.settings import Settings
from tests.support.observability import dashboard_exprs, decision

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(registry: CollectorRegistry) -> Samples:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def types(registry: CollectorRegistry) -> dict[str, str]:
    text = generate_latest(registry).decode()
    return {family.name: family.type for family in text_string_to_metric_families(text)}


M = (("model_name", "m"), ("target_model_name", "m2"))


def L(*pairs: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(pairs))


def test_objective_families_record_one_request_and_dual_emit_legacy_names() -> None:
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)
    d = decision(priority=2, size=300)
    metrics.picked(d)
    metrics.first_response_chunk(d, 0.3)
    metrics.completed(d, Usage(prompt_tokens=10, completion_tokens=4, cached_tokens=8), 2000, 2.0)
    metrics.failed(EppError("ResourceExhausted", "x"), "m", "m2")
    metrics.processing(0.00004, 0.00001)
    got = samples(registry)
    with_priority = tuple(sorted((*M, ("priority", "2"))))
    assert got[("inference_objective_request_total", with_priority)] == 1
    assert got[("inference_model_request_total", M)] == 1  # legacy: no priority label
    error = tuple(sorted((*M, ("error_code", "ResourceExhausted"))))
    assert got[("inference_objective_request_error_total", error)] == 1
    assert got[("inference_model_request_error_total", error)] == 1
    for prefix in ("inference_objective_", "inference_model_"):
        assert got[(prefix + "request_duration_seconds_bucket", L(*M, ("le", "1.5")))] == 0
        assert got[(prefix + "request_duration_seconds_bucket", L(*M, ("le", "2.0")))] == 1
        assert got[(prefix + "request_sizes_bucket", L(*M, ("le", "512.0")))] == 1
        assert got[(prefix + "request_sizes_bucket", L(*M, ("le", "256.0")))] == 0
        assert got[(prefix + "response_sizes_sum", M)] == 2000
        assert got[(prefix + "input_tokens_sum", M)] == 10
        assert got[(prefix + "output_tokens_sum", M)] == 4
        assert got[(prefix + "normalized_time_per_output_token_seconds_sum", M)] == 0.5
        assert got[(prefix + "running_requests", (("model_name", "m"),))] == 0
    assert got[("inference_objective_prompt_cached_tokens_sum", M)] == 8
    assert got[("inference_objective_request_ttft_seconds_bucket", L(*M, ("le", "0.4")))] == 1
    assert got[("inference_objective_request_ttft_seconds_bucket", L(*M, ("le", "0.2")))] == 0
    assert got[("inference_extension_request_processing_duration_seconds_bucket", (("le", "5e-05"),))] == 1
    assert got[("inference_extension_response_processing_duration_seconds_count", ())] == 1
    kinds = types(registry)
    assert kinds["inference_objective_request"] == "counter"
    assert kinds["inference_objective_running_requests"] == "gauge"
    assert kinds["inference_objective_request_duration_seconds"] == "histogram"


def test_reference_buckets() -> None:
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)
    metrics.picked(decision())
    got = samples(registry)

    def bounds(name: str) -> list[str]:
        return [dict(k[1])["le"] for k in got if k[0] == name + "_bucket" and dict(k[1]).get("model_name") == "m"]

    assert bounds("inference_objective_request_duration_seconds")[:3] == ["0.005", "0.025", "0.05"]
    assert bounds("inference_objective_request_duration_seconds")[-2:] == ["3600.0", "+Inf"]
    sizes = bounds("inference_objective_request_sizes")
    assert sizes[0] == "64.0" and sizes[-2] == "1073741824.0" and len(sizes) == 26
    assert bounds("inference_objective_output_tokens")[-2] == "8192.0"
    assert bounds("inference_objective_response_sizes")[-3:-1] == ["32778.0", "65536.0"]


def test_running_requests_ignore_empty_model_and_labels_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "MAX_LABEL_SETS", 20)
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)
    metrics.picked(decision(model="", target=""))
    for i in range(20 + 5):
        metrics.picked(decision(model=f"m{i}", target=f"m{i}"))
        metrics.failed(EppError("BadRequest", "x"), f"m{i}", f"m{i}")
    got = samples(registry)
    assert ("inference_objective_running_requests", (("model_name", ""),)) not in got
    other = (("model_name", "other"), ("priority", "0"), ("target_model_name", "other"))
    assert got[("inference_objective_request_total", other)] == 6
    assert got[("inference_objective_running_requests", (("model_name", "other"),))] == 6
    assert sum(1 for k in got if k[0] == "inference_objective_request_total") == 20 + 1
    assert sum(1 for k in got if k[0] == "inference_objective_request_error_total") == 20 + 1


def test_overlong_model_names_are_counted_as_other() -> None:
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)
    long_name = "m" * (families.MAX_LABEL_VALUE + 1)
    metrics.picked(decision(model=long_name, target="m"))
    metrics.failed(EppError("BadRequest", "x"), "m", long_name)
    metrics.picked(decision(model="m" * families.MAX_LABEL_VALUE, target="m"))
    got = samples(registry)
    other = (("model_name", "other"), ("priority", "0"), ("target_model_name", "other"))
    assert got[("inference_objective_request_total", other)] == 1
    assert got[("inference_objective_request_error_total", (("error_code", "BadRequest"), *other[:1], other[2]))] == 1
    assert not any(long_name in value for _, labels in got for _, value in labels)
    assert sum(1 for k in got if k[0] == "inference_objective_request_total") == 2  # the 256-char name is kept


def fleet(n: int = 3) -> EndpointTable:
    table = EndpointTable(16)
    table.replace_all([Endpoint(f"10.0.0.{i + 1}", 8000, name=f"pod-{i}") for i in range(n)])
    return table


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pool_samples(gauges: PoolGauges) -> Samples:
    registry = CollectorRegistry()
    registry.register(gauges)
    return samples(registry)


def test_pool_gauges_average_fresh_endpoints_only_and_refresh_on_interval() -> None:
    table, clock = fleet(), Clock()
    gauges = PoolGauges(table, "pool-a", staleness_s=2.0, refresh_s=5.0, clock=clock)
    name = (("name", "pool-a"),)
    got = pool_samples(gauges)
    assert got[("inference_pool_ready_pods", name)] == 0
    assert ("inference_pool_average_kv_cache_utilization", name) not in got  # nothing measured: absent
    assert got[("inference_pool_stale_endpoints", name)] == 3
    table.kv_usage[:3] = [0.2, 0.4, 0.9]
    table.waiting_queue[:3] = [1, 3, 100]
    table.running_requests[:3] = [2, 4, 6]
    table.metrics_time[:3] = [99.5, 99.0, 90.0]  # the third is 10 s old: stale
    gauges.scrape_errors_total = lambda: 7.0
    got = pool_samples(gauges)
    assert got[("inference_pool_ready_pods", name)] == 0  # cached until the refresh interval passes
    clock.now = 105.0
    table.metrics_time[:3] = [104.5, 104.0, 90.0]
    got = pool_samples(gauges)
    assert got[("inference_pool_ready_pods", name)] == 2
    assert np.isclose(got[("inference_pool_average_kv_cache_utilization", name)], 0.3)
    assert got[("inference_pool_average_queue_size", name)] == 2
    assert got[("inference_pool_average_running_requests", name)] == 3
    assert got[("inference_pool_stale_endpoints", name)] == 1
    assert got[("inference_pool_endpoints", name)] == 3
    assert got[("inference_pool_metrics_max_age_seconds", name)] == 15.0
    assert got[("inference_pool_scrape_errors_total", name)] == 7  # a counter, read live
    # per-pod queue size is live, for every known endpoint
    table.waiting_queue[0] = 42
    got = pool_samples(gauges)
    assert got[("inference_pool_per_pod_queue_size", (("model_server_pod", "pod-0"), ("name", "pool-a")))] == 42
    assert got[("inference_pool_per_pod_queue_size", (("model_server_pod", "pod-2"), ("name", "pool-a")))] == 100
    table.remove("pod-2")
    got = pool_samples(gauges)
    assert ("inference_pool_per_pod_queue_size", (("model_server_pod", "pod-2"), ("name", "pool-a"))) not in got


def test_extension_recorders_and_install() -> None:
    extension.EXTENSION.reset()
    registry = CollectorRegistry()

    table = fleet()
    handle = install(registry, table, Settings())
    table.inflight_requests[[0, 2]] = (2.0, 1.0)
    table.inflight_tokens[0] = 300.0

    class Servicer:
        streams_in_flight = 3
        streams_total = 11

    handle.watch_streams(Servicer())
    extension.record_scheduler_e2e(0.0003)
    extension.plugin_duration("Scorer", "prefix-cache-scorer", "prefix").observe(0.00015)
    extension.record_plugin_duration("Filter", "least-queue-filter", "lq", 0.00005)
    extension.set_prefix_indexer_size(1234)
    extension.record_prefix_match(64, 128)
    extension.record_model_rewrite("canary", "m", "m-v2")
    extension.record_scheduler_attempt("success", "m2", "pod-0", "default", "8000")
    got = samples(registry)
    assert got[("inference_extension_scheduler_e2e_duration_seconds_bucket", (("le", "0.0005"),))] == 1
    scorer = (("extension_point", "Scorer"), ("plugin_name", "prefix"), ("plugin_type", "prefix-cache-scorer"))
    assert got[("inference_extension_plugin_duration_seconds_count", scorer)] == 1
    legacy = (("plugin_name", "prefix"), ("plugin_type", "prefix-cache-scorer"))
    assert got[("inference_extension_scheduler_plugin_duration_seconds_count", legacy)] == 1
    assert got[("inference_extension_prefix_indexer_size", ())] == 1234
    assert got[("inference_extension_prefix_indexer_hit_ratio_bucket", (("le", "0.5"),))] == 1
    assert got[("inference_extension_prefix_indexer_hit_bytes_sum", ())] == 64
    rewrite = (("model_name", "m"), ("model_rewrite_name", "canary"), ("target_model", "m-v2"))
    assert got[("inference_extension_model_rewrite_decisions_total", rewrite)] == 1
    attempt = L(("status", "success"), ("target_model_name", "m2"), ("pod_name", "pod-0"), ("namespace", "default"))
    assert got[("inference_extension_scheduler_attempts_total", L(*attempt, ("port", "8000")))] == 1
    info = next(labels for name, labels in got if name == "inference_extension_info")
    assert [label for label, _ in info] == ["build_ref", "commit"]
    assert got[("inference_extension_extproc_streams_in_flight", ())] == 3
    assert got[("inference_extension_extproc_streams_total", ())] == 11
    assert got[("inference_extension_endpoint_inflight_requests", ())] == 3
    assert got[("inference_extension_endpoint_inflight_tokens", ())] == 300
    assert got[("epp_background_tasks", ())] >= 0
    assert ("epp_asyncio_tasks", ()) not in got  # installed outside a running loop
    assert got[("inference_pool_ready_pods", (("name", "standalone"),))] == 0
    assert handle.request_metrics.registry is registry


def test_dashboard_reads_only_metrics_epp_exports() -> None:
    import re

    registry = CollectorRegistry()

    handle = install(registry, fleet(), Settings(pool_name="p"))
    handle.watch_streams(type("S", (), {"streams_in_flight": 0, "streams_total": 0})())
    text = generate_latest(registry).decode()
    families = {family.name for family in text_string_to_metric_families(text)}
    exprs = dashboard_exprs()
    assert len(exprs) > 20
    for expr in exprs:
        for name in re.findall(r"\b(inference_\w+)", expr):
            base = re.sub(r"_(bucket|sum|count|total)$", "", name)
            assert base in families, f"dashboard reads {name}, which epp does not export"


def test_flow_control_labels_long_fairness_ids_as_other() -> None:
    from epp.flowcontrol.queue import FlowQueue, Item, QueueSettings
    from epp.observability.flowcontrol import FlowControlMetrics

    queue = FlowQueue(QueueSettings())
    long_ids = ["t" * (families.MAX_LABEL_VALUE + 1), "u" * (families.MAX_LABEL_VALUE + 1)]
    for fairness_id in ["tenant-a", *long_ids]:
        queue.push(Item(fairness_id, priority=0, size=10, arrival=0.0, deadline=float("inf")))
    flow_metrics = FlowControlMetrics(queue, lambda: 0.5, "pool")
    flow_metrics.record(None, "dispatched", 0.01, fairness_id=long_ids[0])
    registry = CollectorRegistry()
    registry.register(flow_metrics)
    got = samples(registry)
    size = "inference_extension_flow_control_queue_size"
    labels = (("fairness_id", "{}"), ("inference_pool", "pool"), ("priority", "0"))
    assert got[(size, tuple((k, v.format("other")) for k, v in labels))] == 2
    assert got[(size, tuple((k, v.format("tenant-a")) for k, v in labels))] == 1
    assert not any(len(value) > families.MAX_LABEL_VALUE for _, labels in got for _, value in labels)
