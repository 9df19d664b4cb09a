"""utilization-detector and concurrency-detector: saturation (reference §7.2) and their use as filters."""

from __future__ import annotations

import re

import numpy as np
import pytest

from epp.config.schema import ConfigError, load_config_text
from epp.datastore.table import EndpointTable
from epp.plugins.saturation import ConcurrencyDetector, UtilizationDetector
from epp.scheduling.framework import build_scheduler
from epp.scheduling.types import SchedulingError
from tests.support.plugins import make, pool, request, slots, state

NOW = 100.0


def utilization_pool() -> EndpointTable:
    table = pool(4)
    table.waiting_queue[:4] = [4, 5, 0, 0]
    table.kv_usage[:4] = [0.5, 0.1, 0.1, 0.1]
    table.metrics_time[:4] = [99.9, 99.9, 99.0, 0.0]  # fresh, fresh, stale (1 s > 200 ms), never scraped
    return table


def utilization(**parameters: object) -> UtilizationDetector:
    detector = make(UtilizationDetector, parameters)
    detector.clock = lambda: NOW
    return detector


def test_utilization_filter_keeps_fresh_endpoints_under_both_thresholds() -> None:
    table = utilization_pool()
    # slot 0: q 4 < 5, kv 0.5 < 0.8, fresh → kept; slot 1: q 5 is not < 5; slot 2 stale; slot 3 never scraped
    assert list(utilization().filter(state(table), table.live_slots())) == [0]
    # headroom 0.2: limits q < 6 and kv < 0.96 → slot 1 passes too
    assert list(utilization(headroom=0.2).filter(state(table), table.live_slots())) == [0, 1]


def test_utilization_filter_fails_open() -> None:
    table = utilization_pool()
    assert list(utilization().filter(state(table), slots(1, 2, 3))) == [1, 2, 3]


def test_utilization_saturation_is_the_mean_of_per_endpoint_scores() -> None:
    table = utilization_pool()
    # max(q/5, kv/0.8): slot 0 max(0.8, 0.625) = 0.8, slot 1 max(1.0, 0.125) = 1.0, stale and never → 1.0
    assert utilization().saturation(table, table.live_slots(), NOW) == pytest.approx((0.8 + 1 + 1 + 1) / 4)
    assert utilization().saturation(table, slots(), NOW) == 1.0


def inflight_pool(requests: list[float], tokens: list[float]) -> EndpointTable:
    table = pool(len(requests))
    table.inflight_requests[: len(requests)] = requests
    table.inflight_tokens[: len(tokens)] = tokens
    return table


def test_concurrency_requests_mode() -> None:
    table = inflight_pool([0, 5, 6, 10], [0, 0, 0, 0])
    detector = make(ConcurrencyDetector, {"maxConcurrency": 4, "headroom": 0.5})
    # limit int(4 · 1.5) = 6: in flight < 6 → slots 0 and 1
    assert list(detector.filter(state(table), table.live_slots())) == [0, 1]
    # Σ in flight / Σ capacity = 21 / (4 · 4)
    assert detector.saturation(table, table.live_slots(), NOW) == pytest.approx(21 / 16)
    assert detector.saturation(table, slots(), NOW) == 1.0


def test_concurrency_tokens_mode() -> None:
    table = inflight_pool([9, 9, 9, 9], [0, 999, 1000, 10])
    detector = make(ConcurrencyDetector, {"concurrencyMode": "tokens", "maxTokenConcurrency": 1000})
    assert list(detector.filter(state(table), table.live_slots())) == [0, 1, 3]
    assert detector.saturation(table, table.live_slots(), NOW) == pytest.approx(2009 / 4000)


def test_concurrency_defaults_are_100_requests() -> None:
    table = inflight_pool([50, 100], [0, 0])
    detector = make(ConcurrencyDetector)
    assert list(detector.filter(state(table), table.live_slots())) == [0]
    assert detector.saturation(table, table.live_slots(), NOW) == pytest.approx(150 / 200)


def test_concurrency_detector_in_a_profile_and_as_the_saturation_detector() -> None:
    table = inflight_pool([3, 1, 2], [0, 0, 0])
    config = load_config_text(
        """
plugins:
- {type: concurrency-detector, parameters: {maxConcurrency: 2}}
- {type: queue-scorer}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: concurrency-detector}, {pluginRef: queue-scorer}]
saturationDetector: {pluginRef: concurrency-detector}
""",
        "t",
    )
    scheduler = build_scheduler(config, table)
    assert scheduler.saturation(table.live_slots()) == pytest.approx(6 / 6)
    for _ in range(10):
        assert list(scheduler.schedule(request(), table, table.live_slots()).primary) == [1]  # only one under 2
    table.inflight_requests[1] = 2
    with pytest.raises(SchedulingError):  # a hard limit: every endpoint at capacity empties the profile
        scheduler.schedule(request(), table, table.live_slots())


def test_declared_detector_joins_the_default_profile_as_a_filter() -> None:
    config = load_config_text("plugins: [{type: utilization-detector}, {type: queue-scorer}]", "t")
    assert [e.ref for e in config.profiles[0].entries] == ["utilization-detector", "queue-scorer", "max-score-picker"]
    assert config.saturation_detector == "utilization-detector"
    assert np.isclose(config.plugins["utilization-detector"].plugin.parameters.kv_cache_util_threshold, 0.8)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("plugins: [{type: concurrency-detector, parameters: {concurrencyMode: bytes}}]",
         r"plugins\[0\]\.parameters: concurrencyMode must be requests or tokens, got 'bytes'"),
        ("plugins: [{type: concurrency-detector, parameters: {maxConcurrency: 0}}]",
         r"plugins\[0\]\.parameters: maxConcurrency must be positive"),
        ("plugins: [{type: concurrency-detector, parameters: {headroom: -0.1}}]", r"headroom must be >= 0"),
        ("plugins: [{type: utilization-detector, parameters: {metricsStalenessThreshold: soon}}]",
         r"plugins\[0\]\.parameters: metricsStalenessThreshold: invalid duration 'soon'"),
        ("plugins: [{type: queue-scorer}]\nsaturationDetector: {pluginRef: queue-scorer}",
         r"saturationDetector\.pluginRef: 'queue-scorer' must name a declared utilization-detector or "
         r"concurrency-detector plugin"),
    ],
)  # fmt: skip
def test_detector_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config_text(text, "cfg.yaml")
    assert any(re.search(message, line) for line in error.value.errors), error.value.errors
