"""The alert rules in deploy/observability: `promtool check rules`, and `promtool test rules` on input
series whose names and label sets are taken from what epp itself exports."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from epp.datastore.table import Endpoint, EndpointTable
from epp.errors import EppError
from epp.observability.wiring import install
from epp.scheduling.types import Usage
from epp.settings import Settings
from tests.observability.prom import ALERTS
from tests.support.observability import decision

Series = tuple[str, dict[str, str]]


def test_promtool_check_rules(prometheus_binaries: tuple[str, str]) -> None:
    done = subprocess.run([prometheus_binaries[1], "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 4 rules found" in done.stdout


def exported_registry() -> CollectorRegistry:
    """A wired-up epp's registry after one good request for m→m2, one error, and a fresh pool."""

    table = EndpointTable(8)
    table.replace_all([Endpoint("10.0.0.1", 8000, name="pod-0")])
    table.metrics_time[0] = 1.0
    registry = CollectorRegistry()
    handle = install(
        registry,
        table,
        Settings(pool_name="pool-a", metrics_staleness_threshold=1e9, refresh_prometheus_metrics_interval=0.0),
    )
    metrics = handle.request_metrics
    for model, target in (("m", "m2"), ("ok", "ok")):
        d = decision(model, target)
        metrics.picked(d)
        metrics.completed(d, Usage(prompt_tokens=3, completion_tokens=2), 100, 0.5)
        metrics.failed(EppError("ServiceUnavailable", "x"), model, target)
    return registry


def exported_series() -> list[Series]:
    """Every series of `exported_registry()`."""
    text = generate_latest(exported_registry()).decode()
    return [(s.name, dict(s.labels)) for family in text_string_to_metric_families(text) for s in family.samples]


def pick(series: list[Series], metric: str, **labels: str) -> list[Series]:
    found = [(n, dict(ls)) for n, ls in series if n == metric and all(ls.get(k) == v for k, v in labels.items())]
    assert found, f"epp does not export {metric} with {labels}"
    return found


def selector(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def input_series(series: list[Series]) -> list[dict[str, str]]:
    inputs: list[dict[str, str]] = []

    def add(name: str, labels: dict[str, str], values: str) -> None:
        inputs.append({"series": selector(name, labels), "values": values})

    # latency: m→m2 requests all take 10 to 15 s (p99 > 10 s); ok→ok requests are fast
    for name, labels in pick(series, "inference_model_request_duration_seconds_bucket", model_name="m"):
        add(name, labels, "0+60x20" if labels["le"] == "+Inf" or float(labels["le"]) >= 15 else "0x20")
    for name, labels in pick(series, "inference_model_request_duration_seconds_bucket", model_name="ok"):
        add(name, labels, "0+60x20")
    # errors: m fails 10 of 60 requests a minute (17 %), ok fails 1 of 60 (1.7 %)
    for model, errors in (("m", "0+10x20"), ("ok", "0+1x20")):
        for name, labels in pick(series, "inference_model_request_error_total", model_name=model):
            add(name, labels, errors)
        for name, labels in pick(series, "inference_model_request_total", model_name=model):
            add(name, labels, "0+60x20")
    # pools: pool-a overloaded, pool-b (same series, other pool name) fine
    for gauge, high, low in (
        ("inference_pool_average_queue_size", "60x20", "10x20"),
        ("inference_pool_average_kv_cache_utilization", "0.95x20", "0.5x20"),
    ):
        ((name, labels),) = pick(series, gauge, name="pool-a")
        add(name, labels, high)
        add(name, {**labels, "name": "pool-b"}, low)
    return inputs


def expected_alerts() -> dict[str, list[dict[str, Any]]]:
    return {
        "HighInferenceRequestLatencyP99": [
            {
                "exp_labels": {"severity": "warning", "model_name": "m", "target_model_name": "m2"},
                "exp_annotations": {
                    "title": "High latency (P99) for model m",
                    "description": "The 99th percentile request duration for model m and target model m2 has been "
                    "consistently above 10.0 seconds for 5 minutes.",
                },
            }
        ],
        "HighInferenceErrorRate": [
            {
                "exp_labels": {"severity": "critical", "impact": "availability", "model_name": "m"},
                "exp_annotations": {
                    "title": "High error rate for model m",
                    "description": "The error rate for model m and target model  has been consistently above 5% "
                    "for 5 minutes.",
                },
            }
        ],
        "HighInferencePoolAvgQueueSize": [
            {
                "exp_labels": {"severity": "critical", "impact": "performance", "name": "pool-a"},
                "exp_annotations": {
                    "title": "High average queue size for inference pool pool-a",
                    "description": "The average number of requests pending in the queue for inference pool pool-a "
                    "has been consistently above 50 for 5 minutes.",
                },
            }
        ],
        "HighInferencePoolAvgKVCacheUtilization": [
            {
                "exp_labels": {"severity": "critical", "impact": "resource_exhaustion", "name": "pool-a"},
                "exp_annotations": {
                    "title": "High KV cache utilization for inference pool pool-a",
                    "description": "The average KV cache utilization for inference pool pool-a has been consistently "
                    "above 90% for 5 minutes, indicating potential resource exhaustion.",
                },
            }
        ],
    }


def test_promtool_test_rules_on_epp_series(prometheus_binaries: tuple[str, str], tmp_path: Path) -> None:
    expected = expected_alerts()
    alert_tests: list[dict[str, Any]] = []
    for alert, alerts in expected.items():
        alert_tests.append({"eval_time": "4m", "alertname": alert, "exp_alerts": []})  # `for: 5m` not yet met
        alert_tests.append({"eval_time": "10m", "alertname": alert, "exp_alerts": alerts})
    document = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series(exported_series()), "alert_rule_test": alert_tests}],
    }
    path = tmp_path / "alerts_test.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    done = subprocess.run([prometheus_binaries[1], "test", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
