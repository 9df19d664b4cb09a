"""Real Prometheus scraping a real epp (driven through real Envoy) and a simulated pool exporter.

Checks that every metric the alert rules in deploy/observability/alerts.yaml read exists with the
labels the rules use, that Prometheus evaluates the rules without errors, and that the pool rules
go pending on an overloaded pool. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from epp.datastore.table import Endpoint, EndpointTable
from epp.devstack.envoy import EnvoyProcess, free_port, render_bootstrap
from epp.devstack.processes import EppProcess
from epp.observability.wiring import install
from epp.settings import Settings
from tests.e2e.backends import EchoBackends
from tests.e2e.http import get, post
from tests.observability.prom import ALERTS, Prometheus

pytestmark = pytest.mark.e2e

GOOD, REWRITTEN, STREAMED, BAD = 8, 3, 3, 2
SIM_POOL = "sim-pool"

VLLM_METRICS = """# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 3
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 2
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} 0.5
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
"""


class VllmLikeBackends(EchoBackends):
    """Echo servers that also answer GET /metrics like vLLM, so a scraping data layer sees fresh load."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path == "/metrics":
            return web.Response(text=VLLM_METRICS, content_type="text/plain")
        return await super()._handle(request)


@dataclass
class Stack:
    prometheus: Prometheus
    epp: EppProcess
    envoy: EnvoyProcess
    sim_table: EndpointTable


def simulated_pool() -> tuple[EndpointTable, int, Any]:
    """An in-process exporter of pool gauges over an overloaded, freshly scraped pool of 3 endpoints."""

    table = EndpointTable(8)
    table.replace_all([Endpoint(f"10.0.0.{i}", 8000, name=f"sim-{i}") for i in range(3)])
    table.waiting_queue[:3] = [55, 60, 65]
    table.kv_usage[:3] = [0.92, 0.95, 0.98]
    table.running_requests[:3] = [8, 8, 8]
    table.metrics_time[:3] = time.monotonic()
    registry = CollectorRegistry()
    install(
        registry,
        table,
        Settings(pool_name=SIM_POOL, metrics_staleness_threshold=3600.0, refresh_prometheus_metrics_interval=1.0),
    )
    port = free_port()
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    return table, port, server


@pytest.fixture(scope="module")
def stack(prometheus_binaries: tuple[str, str]) -> Iterator[Stack]:
    backends = VllmLikeBackends([free_port() for _ in range(2)])
    backends.start()
    epp = EppProcess(["--endpoints", ",".join(f"127.0.0.1:{p}" for p in backends.ports)])
    sim_table, sim_port, sim_server = simulated_pool()
    prometheus = Prometheus(
        prometheus_binaries[0], {"epp": f"127.0.0.1:{epp.metrics_port}", "pool-sim": f"127.0.0.1:{sim_port}"}
    )
    started: list[Any] = []
    try:
        epp.start()
        started.append(epp)
        envoy = EnvoyProcess(render_bootstrap("envoy", free_port(), free_port(), epp.grpc_port))
        envoy.start()
        started.append(envoy)
        prometheus.start()
        started.append(prometheus)
        drive_traffic(envoy.listener_port)
        yield Stack(prometheus, epp, envoy, sim_table)
    finally:
        for process in reversed(started):
            process.stop()
        sim_server.shutdown()
        backends.stop()


def drive_traffic(port: int) -> None:
    def good(i: int) -> None:
        status, _, body = post(port, "/v1/completions", {"model": "m", "prompt": f"hello {i}"})
        assert status == 200, body

    threads = [threading.Thread(target=good, args=(i,)) for i in range(GOOD)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    for _ in range(REWRITTEN):
        headers = {"x-gateway-model-name-rewrite": "m-canary"}
        status, _, _ = post(port, "/v1/completions", {"model": "m", "prompt": "p"}, headers)
        assert status == 200
    for _ in range(STREAMED):
        status, _, _ = post(port, "/v1/completions", {"model": "m", "prompt": "p", "stream": True})
        assert status == 200
    for _ in range(BAD):
        status, _, _ = post(port, "/v1/completions", {"prompt": "no model"})
        assert status == 400


def rule_requirements() -> dict[str, set[str]]:
    """metric name → labels the alert rules group by or print, for every metric the rules read."""
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    needed: dict[str, set[str]] = {}
    for rule in rules:
        expr = rule["expr"]
        labels = set(re.findall(r"\$labels\.(\w+)", " ".join(rule["annotations"].values())))
        for group in re.findall(r"by \(([^)]*)\)", expr):
            labels |= {label.strip() for label in group.split(",")}
        for metric in re.findall(r"\b(inference_\w+)", expr):
            needed.setdefault(metric, set()).update(labels | ({"le"} if metric.endswith("_bucket") else set()))
    return needed


def value(result: list[dict[str, Any]]) -> float:
    return float(result[0]["value"][1]) if result else float("nan")


def test_every_metric_the_alert_rules_read_exists_with_their_labels(stack: Stack) -> None:
    prom = stack.prometheus
    total = GOOD + REWRITTEN + STREAMED
    prom.wait_for('sum(inference_model_request_total{job="epp"})', lambda r: value(r) == total)
    needed = rule_requirements()
    assert len(needed) == 5, needed
    pool_metrics = {m for m in needed if m.startswith("inference_pool_")}
    status, text = get(stack.epp.metrics_port, "/metrics")
    assert status == 200
    exposition = [(s.name, s.labels) for f in text_string_to_metric_families(text.decode()) for s in f.samples]
    for metric, labels in needed.items():
        if metric in pool_metrics:
            continue
        assert prom.series(f'{metric}{{job="epp"}}'), f"Prometheus has no {metric} from epp"
        # label names as exported (Prometheus drops empty values, e.g. model_name="" of a body without model)
        exported = [labels_ for name, labels_ in exposition if name == metric]
        assert exported, f"epp exports no {metric}"
        for one in exported:
            assert labels <= one.keys(), f"{metric} lacks {labels - one.keys()}: {one}"
    # the pool gauges, from the simulated fresh pool (same code as epp's, exported by PoolGauges)
    prom.wait_for('inference_pool_ready_pods{job="pool-sim"}', lambda r: value(r) == 3)
    for metric in pool_metrics:
        series = prom.series(f'{metric}{{job="pool-sim"}}')
        assert [s["name"] for s in series] == [SIM_POOL], series
    # epp itself: ready_pods is always there; the averages exist once a data layer scrapes the backends
    ready = prom.wait_for('inference_pool_ready_pods{job="epp"}', lambda r: len(r) == 1)
    assert ready[0]["metric"]["name"] == "standalone"
    if value(ready) == 0:
        pytest.xfail("this build does not scrape model servers yet: epp's pool averages are (correctly) absent")
    for metric in pool_metrics:
        assert prom.series(f'{metric}{{job="epp",name="standalone"}}'), metric


def test_objective_and_legacy_names_agree(stack: Stack) -> None:
    prom = stack.prometheus
    total = GOOD + REWRITTEN + STREAMED
    prom.wait_for('sum(inference_objective_request_total{job="epp"})', lambda r: value(r) == total)
    canary = prom.query('inference_model_request_total{job="epp",target_model_name="m-canary"}')
    assert value(canary) == REWRITTEN and canary[0]["metric"]["model_name"] == "m"
    errors = prom.query('sum by (error_code) (inference_objective_request_error_total{job="epp"})')
    assert {r["metric"]["error_code"]: float(r["value"][1]) for r in errors} == {"BadRequest": BAD}
    count = prom.query('sum(inference_model_request_duration_seconds_count{job="epp"})')
    assert value(count) == total
    # a response's usage is counted when the observing stream sees its end, which may be after the client's
    prom.wait_for('sum(inference_objective_output_tokens_sum{job="epp"})', lambda r: value(r) == 5 * total)
    assert value(prom.query('sum(inference_objective_running_requests{job="epp"})')) == 0
    assert value(prom.query('sum(inference_model_normalized_time_per_output_token_seconds_count{job="epp"})')) == total
    assert prom.series('inference_pool_per_pod_queue_size{job="epp"}')
    assert prom.series('inference_extension_info{job="epp"}')
    # every successful pick is timed and counted with the endpoint it chose
    picks = GOOD + REWRITTEN + STREAMED
    assert value(prom.query('inference_extension_scheduler_e2e_duration_seconds_count{job="epp"}')) == picks
    attempts = prom.query('sum(inference_extension_scheduler_attempts_total{job="epp",status="success"})')
    assert value(attempts) == picks
    assert prom.series('inference_extension_prefix_indexer_size{job="epp"}')
    scorer = (
        'inference_extension_plugin_duration_seconds_count{job="epp",extension_point="Scorer",'
        'plugin_type="predicted-ttft-scorer"}'
    )
    assert value(prom.query(f"sum({scorer})")) == picks
    # every streamed response's TTFT prediction is scored against what was observed
    errors = 'inference_extension_ttft_prediction_error_ratio_count{job="epp"}'
    assert value(prom.query(f"sum({errors})")) == STREAMED


def test_epp_overhead_streams_and_ttft_are_exported(stack: Stack) -> None:
    prom = stack.prometheus
    total = GOOD + REWRITTEN + STREAMED + BAD
    result = prom.wait_for(
        'inference_extension_request_processing_duration_seconds_count{job="epp"}', lambda r: value(r) >= total
    )
    assert value(result) >= total
    response = prom.query('inference_extension_response_processing_duration_seconds_count{job="epp"}')
    assert value(response) >= GOOD + REWRITTEN + STREAMED
    assert value(prom.query('inference_extension_extproc_streams_total{job="epp"}')) >= total
    assert value(prom.query('inference_extension_extproc_streams_in_flight{job="epp"}')) == 0
    ttft = prom.wait_for('sum(inference_objective_request_ttft_seconds_count{job="epp"})', lambda r: value(r) > 0)
    assert value(ttft) == STREAMED


def test_rules_evaluate_and_pool_alerts_go_pending(stack: Stack) -> None:
    prom = stack.prometheus

    def firing(result: Any) -> set[tuple[str, str]]:
        return {(a["labels"]["alertname"], a["labels"].get("name", "")) for a in result["alerts"]}

    expected = {("HighInferencePoolAvgQueueSize", SIM_POOL), ("HighInferencePoolAvgKVCacheUtilization", SIM_POOL)}
    deadline = time.monotonic() + 15
    alerts: dict[str, Any] = {"alerts": []}
    while time.monotonic() < deadline and not expected <= firing(alerts):
        time.sleep(0.25)
        alerts = prom.api("alerts")
    assert expected <= firing(alerts), alerts
    assert all(a["state"] == "pending" for a in alerts["alerts"])  # `for: 5m`
    rules = [rule for group in prom.api("rules")["groups"] for rule in group["rules"]]
    assert sorted(r["name"] for r in rules) == sorted(
        [
            "HighInferenceErrorRate",
            "HighInferencePoolAvgKVCacheUtilization",
            "HighInferencePoolAvgQueueSize",
            "HighInferenceRequestLatencyP99",
        ]
    )
    for rule in rules:
        assert rule["health"] == "ok", rule


def test_dashboard_queries_are_valid_promql(stack: Stack) -> None:
    from tests.support.observability import dashboard_exprs

    for expr in dashboard_exprs():
        stack.prometheus.query(expr.replace("$pool", ".*"))  # raises unless Prometheus accepts it
