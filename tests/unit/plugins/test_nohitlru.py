"""no-hit-lru-scorer: cold requests go to the least recently cold-hit endpoints; warm ones score 0.5."""

from __future__ import annotations

import numpy as np
import pytest

from epp.config.schema import ConfigError, load_config_text
from epp.datastore.table import EndpointTable
from epp.plugins.nohitlru import NoHitLRUScorer
from epp.scheduling.framework import build_scheduler
from epp.scheduling.plugin import ParameterError
from epp.scheduling.types import ProfileResult, SchedulingResult
from tests.support.plugins import make, pool, request, slots, state, with_match


def pick(scorer: NoHitLRUScorer, table: EndpointTable, slot: int, prefill: int | None = None) -> None:
    """Score a cold request, then record a pick of `slot` (and a prefill pick) as the pre-request hook sees it."""
    cycle = state(table)
    scorer.score(cycle, slots(0, 1, 2, 3))
    results = {"decode": ProfileResult(slots(slot))}
    if prefill is not None:
        results["prefill"] = ProfileResult(slots(prefill))
    scorer.pre_request(
        cycle, SchedulingResult(results, "decode", prefill_profile="prefill" if prefill is not None else "")
    )


def test_cold_request_ranks_never_used_first_then_least_recent() -> None:
    table = pool(4)
    scorer = make(NoHitLRUScorer)
    scorer.bind(table)
    # nothing used yet: ranks 0..3 in candidate order → 1 - rank/3
    np.testing.assert_allclose(scorer.score(state(table), slots(0, 1, 2, 3)), [1, 2 / 3, 1 / 3, 0])
    pick(scorer, table, 2)
    pick(scorer, table, 0)
    # never used: slots 1, 3 → ranks 0, 1; then LRU oldest first: slot 2 rank 2 + 0, slot 0 rank 2 + 1
    np.testing.assert_allclose(scorer.score(state(table), slots(0, 1, 2, 3)), [0, 1, 1 / 3, 2 / 3])


def test_lru_position_is_global_and_scores_clamp_at_zero() -> None:
    table = pool(4)
    scorer = make(NoHitLRUScorer)
    scorer.bind(table)
    pick(scorer, table, 2)
    pick(scorer, table, 3)
    # candidates 1 and 3: slot 1 never used → 1; slot 3 rank 1 + LRU position 1 = 2 → 1 - 2/1 < 0 → 0
    np.testing.assert_allclose(scorer.score(state(table), slots(1, 3)), [1, 0])
    np.testing.assert_allclose(scorer.score(state(table), slots(3)), [1])  # a lone candidate


def test_warm_requests_score_half_and_do_not_touch_the_lru() -> None:
    table = pool(4)
    scorer = make(NoHitLRUScorer)
    scorer.bind(table)
    cycle = with_match(state(table), 4, {1: 2})
    np.testing.assert_allclose(scorer.score(cycle, slots(0, 1, 2, 3)), [0.5] * 4)
    scorer.pre_request(cycle, SchedulingResult({"default": ProfileResult(slots(1))}, "default"))
    assert list(scorer.lru.order) == []


def test_lru_size_touch_order_prefill_and_removal() -> None:
    table = pool(4)
    scorer = make(NoHitLRUScorer, {"lruSize": 2})
    scorer.bind(table)
    pick(scorer, table, 0)
    pick(scorer, table, 1)
    pick(scorer, table, 2)  # evicts slot 0
    assert list(scorer.lru.order) == [1, 2] and scorer.lru.position[0] == -1
    pick(scorer, table, 1)  # moves to the recent end
    assert list(scorer.lru.order) == [2, 1]
    pick(scorer, table, 0, prefill=3)  # the prefill endpoint is touched too
    assert list(scorer.lru.order) == [0, 3]
    table.remove("pod-3")
    assert list(scorer.lru.order) == [0] and scorer.lru.position[3] == -1


def test_cold_requests_spread_over_the_pool() -> None:
    table = pool(4)
    scheduler = build_scheduler(load_config_text("plugins: [{type: no-hit-lru-scorer}]", "t"), table)
    picks = []
    for i, letter in enumerate("abcde"):
        req = request(prompt=letter.encode() * 200, request_id=str(i))  # distinct prompts: every request is cold
        result = scheduler.schedule(req, table, table.live_slots())
        scheduler.pre_request(req, result, table)
        picks.append(int(result.primary[0]))
    assert picks == [0, 1, 2, 3, 0]  # never-used in order, then the least recently used


def test_lru_size_must_be_positive() -> None:
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.parameters: lruSize must be positive"):
        load_config_text("plugins: [{type: no-hit-lru-scorer, parameters: {lruSize: 0}}]", "t")


@pytest.mark.parametrize(
    ("parameters", "needle"),
    [
        ({"prefixPluginType": "session-affinity-scorer"}, "prefixPluginType 'session-affinity-scorer'"),
        ({"prefixPluginName": "my-prefix"}, "prefixPluginName 'my-prefix'"),
    ],
)
def test_prefix_plugin_references_other_than_the_producer_are_refused(parameters: dict[str, str], needle: str) -> None:
    with pytest.raises(ParameterError, match=needle):
        NoHitLRUScorer.parse_parameters(parameters, "plugins[0].parameters")
    accepted = {"prefixPluginType": "approx-prefix-cache-producer", "prefixPluginName": "prefix-cache-scorer"}
    assert NoHitLRUScorer.parse_parameters(accepted, "p").prefix_plugin_type == "approx-prefix-cache-producer"
