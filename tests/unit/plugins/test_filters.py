"""header-based-testing-filter, label-selector-filter, prefill-filter / decode-filter, prefix-cache-affinity-filter."""

from __future__ import annotations

import re

import numpy as np
import pytest

from epp.config.schema import ConfigError, load_config_text
from epp.datastore.table import Endpoint, EndpointTable
from epp.plugins.filters import (
    ByLabelSelectorFilter,
    DecodeFilter,
    HeaderBasedTestingFilter,
    LabelSelectorFilter,
    PrefillFilter,
    PrefixCacheAffinityFilter,
    parse_selection,
)
from epp.scheduling.framework import build_scheduler
from epp.scheduling.types import SchedulingError
from tests.support.plugins import make, pool, request, slots, state, with_match

HEADER = "test-epp-endpoint-selection"


def kept(result: np.ndarray) -> list[int]:
    return [int(s) for s in result]


# --- header-based-testing-filter --------------------------------------------------------------------


def selection_pool() -> tuple[HeaderBasedTestingFilter, EndpointTable]:
    table = pool(4)  # 10.0.0.1 … 10.0.0.4 :8000 in slots 0 … 3
    table.add(Endpoint("10.0.0.1", 9000, name="pod-4"))  # slot 4: same IP as slot 0, other port
    table.add(Endpoint("fd00::1", 8000, name="pod-5"))  # slot 5: IPv6
    plugin = make(HeaderBasedTestingFilter)
    plugin.bind(table)
    return plugin, table


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.3:8000, 10.0.0.1", [2, 0, 4]),  # header order; a bare IP selects every port at that IP
        ("10.0.0.2,10.0.0.2:8000, 10.0.0.2", [1]),  # deduplicated
        ("[fd00::1]:8000", [5]),
        ("fd00::1", [5]),
        ("[fd00::1]", [5]),
        ("10.0.0.1:9000", [4]),
        ("10.9.9.9, 10.0.0.1:7000", []),
        ("", []),
        (" , ", []),
    ],
)
def test_header_selection(value: str, expected: list[int]) -> None:
    plugin, table = selection_pool()
    cycle = state(table, {HEADER: value})
    assert kept(plugin.filter(cycle, table.live_slots())) == expected


def test_header_absent_keeps_nothing_and_candidates_bound_the_selection() -> None:
    plugin, table = selection_pool()
    assert kept(plugin.filter(state(table), table.live_slots())) == []
    cycle = state(table, {HEADER: "10.0.0.3:8000,10.0.0.1:8000,10.0.0.2:8000"})
    assert kept(plugin.filter(cycle, slots(1, 2))) == [2, 1]


def test_header_filter_follows_membership() -> None:
    plugin, table = selection_pool()
    table.remove("pod-2")
    table.add(Endpoint("10.0.0.9", 8000, name="pod-9"))
    cycle = state(table, {HEADER: "10.0.0.3, 10.0.0.9"})
    assert kept(plugin.filter(cycle, table.live_slots())) == [table.slot_of("pod-9")]


def test_parse_selection_forms() -> None:
    assert parse_selection("a:1, [::1]:2, ::1, [::2]") == [
        ("a", "a:1"),
        ("::1", "[::1]:2"),
        ("::1", None),
        ("::2", None),
    ]


def test_header_filter_in_a_profile_routes_to_the_named_endpoint() -> None:
    table = pool(3)
    config = load_config_text("plugins: [{type: header-based-testing-filter}, {type: queue-scorer}]", "t")
    scheduler = build_scheduler(config, table)
    for _ in range(20):
        result = scheduler.schedule(request({HEADER: "10.0.0.2"}), table, table.live_slots())
        assert kept(result.primary) == [1]
    with pytest.raises(SchedulingError, match="no endpoints available"):
        scheduler.schedule(request(), table, table.live_slots())


# --- label filters -------------------------------------------------------------------------------------

LABELS = [{"app": "a", "tier": "fast"}, {"app": "a", "tier": "slow"}, {"app": "b"}, {}]


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"matchLabels": {"app": "a"}}, [0, 1]),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["fast", "medium"]}]}, [0]),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["fast"]}]}, [1, 2, 3]),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, [0, 1]),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, [2, 3]),
        ({"matchLabels": {"app": "a"}, "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["slow"]}]},
         [0]),
        ({}, [0, 1, 2, 3]),  # the empty selector selects everything
    ],
)  # fmt: skip
def test_label_selector(parameters: dict[str, object], expected: list[int]) -> None:
    table = pool(4, LABELS)
    plugin = make(LabelSelectorFilter, parameters)
    plugin.bind(table)
    assert kept(plugin.filter(state(table), table.live_slots())) == expected


def test_label_selector_follows_label_changes_and_alias() -> None:
    table = pool(4, LABELS)
    plugin = make(ByLabelSelectorFilter, {"matchLabels": {"app": "a"}})
    plugin.bind(table)
    table.add(Endpoint("10.0.0.4", 8000, name="pod-3", labels={"app": "a"}))  # relabelled in place
    table.remove("pod-0")
    assert kept(plugin.filter(state(table), table.live_slots())) == [1, 3]


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("{matchExpressions: [{key: tier, operator: Bogus}]}",
         r"plugins\[0\]\.parameters\.matchExpressions\[0\]\.operator: expected one of In, NotIn, Exists, DoesNotExist"),
        ("{matchExpressions: [{key: tier, operator: In}]}",
         r"matchExpressions\[0\]\.values: operator In needs at least one value"),
        ("{matchExpressions: [{key: tier, operator: Exists, values: [x]}]}",
         r"matchExpressions\[0\]\.values: operator Exists takes no values"),
        ("{matchLabels: [app]}", r"plugins\[0\]\.parameters\.matchLabels: expected a mapping"),
        ("{selector: {}}", r"parameters\.selector: unknown parameter .* known: matchExpressions, matchLabels"),
    ],
)  # fmt: skip
def test_label_selector_errors(parameters: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config_text(f"plugins: [{{type: label-selector-filter, parameters: {parameters}}}]", "t")
    assert any(re.search(message, line) for line in error.value.errors), error.value.errors


ROLES = ["prefill", "decode", "both", "prefill-decode", "encode-prefill", "encode", None, "encode-prefill-decode"]


def test_role_filters() -> None:
    table = pool(8, [{"llm-d.ai/role": role} if role else {} for role in ROLES])
    prefill, decode = make(PrefillFilter), make(DecodeFilter)
    prefill.bind(table)
    decode.bind(table)
    assert kept(prefill.filter(state(table), table.live_slots())) == [0, 2, 3, 4, 7]
    assert kept(decode.filter(state(table), table.live_slots())) == [1, 2, 3, 6, 7]  # unlabelled pods decode
    assert kept(decode.filter(state(table), slots(0, 5, 6))) == [6]


# --- prefix-cache-affinity-filter ------------------------------------------------------------------------


def affinity(**parameters: object) -> PrefixCacheAffinityFilter:
    return make(PrefixCacheAffinityFilter, {"explorationProbability": 0.0, **parameters})


def test_affinity_keeps_endpoints_at_or_above_the_threshold() -> None:
    table = pool(4)
    # 10 request blocks; scores 0.9, 0.8, 0.2, 0 → sticky at the default 0.80: slots 0 and 1
    cycle = with_match(state(table), 10, {0: 9, 1: 8, 2: 2})
    assert kept(affinity().filter(cycle, table.live_slots())) == [0, 1]
    assert kept(affinity(affinityThreshold=0.95).filter(cycle, table.live_slots())) == [0, 1, 2, 3]  # none sticky
    assert kept(affinity().filter(cycle, slots(2))) == [2]  # a single candidate stays
    assert kept(affinity(affinityThreshold=0.0).filter(cycle, table.live_slots())) == [0, 1, 2, 3]  # gate off
    assert kept(affinity().filter(state(table), table.live_slots())) == [0, 1, 2, 3]  # no prefix information


def test_affinity_in_flight_tokens_gate() -> None:
    table = pool(4)
    table.inflight_tokens[:4] = [5000, 3000, 1000, 500]
    cycle = with_match(state(table), 10, {0: 9, 1: 8, 2: 2})
    # least-loaded sticky 3000 - least-loaded other 500 = 2500
    assert kept(affinity(maxTokensInFlightPenalty=1000).filter(cycle, table.live_slots())) == [0, 1, 2, 3]
    assert kept(affinity(maxTokensInFlightPenalty=3000).filter(cycle, table.live_slots())) == [0, 1]


def test_affinity_exploration_skips_the_gate_with_its_probability() -> None:
    table = pool(4)
    cycle = with_match(state(table), 10, {0: 9})
    assert kept(affinity(explorationProbability=1.0).filter(cycle, table.live_slots())) == [0, 1, 2, 3]
    plugin = make(PrefixCacheAffinityFilter)  # default explorationProbability 0.01
    plugin.rng = np.random.default_rng(7)
    skipped = sum(len(plugin.filter(cycle, table.live_slots())) == 4 for _ in range(4000))
    assert 15 < skipped < 70  # 40 expected; ±4 sigma ≈ ±25


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("{affinityThreshold: 1.5}", r"plugins\[0\]\.parameters: affinityThreshold must be <= 1.0"),
        ("{explorationProbability: 2}", r"explorationProbability must be in \[0, 1\]"),
        ("{maxTokensInFlightPenalty: -1}", r"maxTokensInFlightPenalty must be >= 0"),
    ],
)
def test_affinity_errors(parameters: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config_text(f"plugins: [{{type: prefix-cache-affinity-filter, parameters: {parameters}}}]", "t")
    assert any(re.search(message, line) for line in error.value.errors), error.value.errors


def test_affinity_filter_with_the_real_producer_sticks_to_the_warm_endpoint() -> None:
    table = pool(3)
    text = (
        "plugins: [{type: prefix-cache-affinity-filter, parameters: {explorationProbability: 0}}, {type: queue-scorer}]"
    )
    config = load_config_text(text, "t")
    scheduler = build_scheduler(config, table)  # the approx-prefix-cache-producer is created for it
    prompt = b"You are a careful assistant. " * 40
    first_request = request(prompt=prompt + b"Q1", request_id="1")
    first = scheduler.schedule(first_request, table, table.live_slots())
    scheduler.pre_request(first_request, first, table)
    home = int(first.primary[0])
    table.waiting_queue[home] = 50  # the queue scorer alone would now avoid it
    again = request(prompt=prompt + b"Q2", request_id="2")
    assert int(scheduler.schedule(again, table, table.live_slots()).primary[0]) == home
