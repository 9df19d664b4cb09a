"""token-load-scorer (+ inflight-load-producer), load-aware-scorer, active-request-scorer: reference formulas."""

from __future__ import annotations

import re

import numpy as np
import orjson
import pytest

from epp.config.schema import ConfigError, load_config_text
from epp.director import Director
from epp.plugins.load import (
    INFLIGHT_KEY,
    ActiveRequestScorer,
    InflightLoadProducer,
    LoadAwareScorer,
    TokenLoadScorer,
)
from epp.requests.openai import parse_openai_body
from epp.scheduling.framework import build_scheduler
from tests.support.plugins import make, pool, slots, state


def test_token_load_scorer_is_one_minus_tokens_over_threshold() -> None:
    table = pool(4)
    table.inflight_tokens[:4] = [0, 250, 1000, 5000]
    producer = make(InflightLoadProducer)
    producer.bind(table)
    cycle = state(table)
    producer.produce(cycle, slots(0, 1, 2, 3))
    assert cycle.read(INFLIGHT_KEY) is not None
    scorer = make(TokenLoadScorer, {"queueThresholdTokens": 1000})
    # 1 - min(1, t/1000): 0 → 1, 250 → 0.75, 1000 → 0, 5000 → 0 (clamped)
    np.testing.assert_allclose(scorer.score(cycle, slots(0, 1, 2, 3)), [1.0, 0.75, 0.0, 0.0])


def test_token_load_default_threshold_is_4mi_tokens() -> None:
    table = pool(2)
    table.inflight_tokens[1] = 2_097_152  # half of 4,194,304
    scorer = make(TokenLoadScorer)
    np.testing.assert_allclose(scorer.score(state(table), slots(0, 1)), [1.0, 0.5])


def test_token_load_scorer_gets_its_producer_and_steers_away_from_inflight_tokens() -> None:
    table = pool(2)
    config = load_config_text("plugins: [{type: token-load-scorer}]", "t")
    scheduler = build_scheduler(config, table)
    assert isinstance(scheduler.plugins["inflight-load-producer"], InflightLoadProducer)  # auto-created
    director = Director(table, scheduler, hooks=scheduler)
    raw = orjson.dumps({"model": "m", "prompt": "x" * 4000})
    first = director.decide("a", {}, parse_openai_body(raw, "/v1/completions"), raw, None)
    # the director charged max(4028 bytes / 4, 1) · 2.5 tokens to the first pick
    assert table.inflight_tokens[first.charged_slot] == pytest.approx(len(raw) // 4 * 2.5)
    second = director.decide("b", {}, parse_openai_body(raw, "/v1/completions"), raw, None)
    assert second.charged_slot != first.charged_slot
    director.complete(first, None)
    director.complete(second, None)
    assert not table.inflight_tokens[:2].any()


def test_load_aware_scorer_halves_and_falls_to_zero_at_threshold() -> None:
    table = pool(4)
    table.waiting_queue[:4] = [0, 5, 10, 20]
    scorer = make(LoadAwareScorer, {"threshold": 10})
    # 0.5 · (1 - min(q, 10)/10)
    np.testing.assert_allclose(scorer.score(state(table), slots(0, 1, 2, 3)), [0.5, 0.25, 0.0, 0.0])
    default = make(LoadAwareScorer)
    table.waiting_queue[0] = 32
    np.testing.assert_allclose(default.score(state(table), slots(0)), [0.375])  # 0.5 · (1 - 32/128)


def test_active_request_scorer_defaults() -> None:
    table = pool(4)
    table.inflight_requests[:4] = [0, 2, 4, 1]
    scorer = make(ActiveRequestScorer)
    # idle → 1; busy → (4 - n)/4: 2 → 0.5, 4 → 0, 1 → 0.75
    np.testing.assert_allclose(scorer.score(state(table), slots(0, 1, 2, 3)), [1.0, 0.5, 0.0, 0.75])


def test_active_request_scorer_idle_threshold_and_busy_gap() -> None:
    table = pool(4)
    table.inflight_requests[:4] = [0, 2, 4, 1]
    scorer = make(ActiveRequestScorer, {"idleThreshold": 1, "maxBusyScore": 0.5, "requestTimeout": "2m"})
    # ≤ 1 in flight is idle → 1; busy: (4 - 2)/4 · 0.5 = 0.25, (4 - 4)/4 · 0.5 = 0
    np.testing.assert_allclose(scorer.score(state(table), slots(0, 1, 2, 3)), [1.0, 0.25, 0.0, 1.0])
    table.inflight_requests[:4] = 0
    np.testing.assert_allclose(scorer.score(state(table), slots(0, 1, 2, 3)), [1.0, 1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("plugins: [{type: token-load-scorer, parameters: {queueThresholdTokens: 0}}]",
         r"plugins\[0\]\.parameters: queueThresholdTokens must be positive"),
        ("plugins: [{type: load-aware-scorer, parameters: {threshold: -1}}]",
         r"plugins\[0\]\.parameters: threshold must be a positive queue length"),
        ("plugins: [{type: active-request-scorer, parameters: {maxBusyScore: 1.5}}]",
         r"plugins\[0\]\.parameters: maxBusyScore must be in \[0, 1\]"),
        ("plugins: [{type: active-request-scorer, parameters: {requestTimeout: soon}}]",
         r"plugins\[0\]\.parameters: requestTimeout: invalid duration 'soon'"),
        ("plugins: [{type: active-request-scorer, parameters: {requestTimeout: 30s}}]",
         r"requestTimeout '30s' is not configurable here: .* remove the parameter"),
        ("plugins: [{type: load-aware-scorer, parameters: {queueThreshold: 3}}]",
         r"plugins\[0\]\.parameters\.queueThreshold: unknown parameter of load-aware-scorer; known: threshold"),
    ],
)  # fmt: skip
def test_parameter_errors_name_the_path(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config_text(text, "cfg.yaml")
    assert any(re.search(message, line) for line in error.value.errors), error.value.errors
