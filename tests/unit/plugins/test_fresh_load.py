"""Load signals between scrapes: the scrape corrected by what was routed and finished since it was sent."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from epp.config.schema import load_config_text
from epp.datastore.fresh import fresh_load
from epp.director import Director
from epp.plugins.saturation import UtilizationDetector
from epp.plugins.scorers import KVCacheUtilizationScorer, QueueScorer, RunningRequestsSizeScorer
from epp.requests.openai import parse_openai_body
from epp.scheduling.framework import build_scheduler
from tests.support.plugins import make, pool, slots, state


def test_requests_routed_since_the_scrape_wait_and_finished_ones_leave() -> None:
    table = pool(2)
    table.waiting_queue[:2] = [2, 1]
    table.running_requests[:2] = [3, 3]
    table.scrape_inflight_requests[:2] = [1, 3]
    table.inflight_requests[:2] = [4, 0]  # slot 0: 3 routed since; slot 1: 3 finished since
    load = fresh_load(table, slots(0, 1))
    np.testing.assert_allclose(load.waiting, [5, 0])
    # slot 1: 4 requests at the scrape, 3 finished: the waiting one ran, one is left running
    np.testing.assert_allclose(load.running, [3, 1])


def test_kv_usage_grows_by_the_prompt_tokens_routed_since_the_scrape() -> None:
    table = pool(3)
    table.kv_usage[:3] = [0.5, 0.5, 0.9]
    table.cache_num_blocks[:2] = [100, 100]
    table.cache_block_size[:2] = [16, 16]
    table.scrape_inflight_prompt_tokens[:3] = [100, 900, 0]
    table.inflight_prompt_tokens[:3] = [900, 100, 5000]
    load = fresh_load(table, slots(0, 1, 2))
    # ±800 tokens of a 1,600-token cache; slot 2 has no known cache size and keeps the scraped value
    np.testing.assert_allclose(load.kv_usage, [1.0, 0.0, 0.9])


def test_the_reference_scorers_read_the_fresh_signals() -> None:
    table = pool(2)
    table.inflight_requests[0] = 3  # never scraped: its whole in-flight load counts
    cycle = state(table)
    np.testing.assert_allclose(make(QueueScorer).score(cycle, slots(0, 1)), [0.0, 1.0])
    table.running_requests[1] = 6
    cycle = state(table)
    np.testing.assert_allclose(make(RunningRequestsSizeScorer).score(cycle, slots(0, 1)), [1.0, 0.0])
    table.cache_num_blocks[:2] = 10
    table.cache_block_size[:2] = 16
    table.inflight_prompt_tokens[0] = 80
    np.testing.assert_allclose(make(KVCacheUtilizationScorer).score(state(table), slots(0, 1)), [0.5, 1.0])


def test_the_utilization_detector_sees_requests_routed_since_the_scrape() -> None:
    table = pool(1)
    table.metrics_time[0] = 1.0
    detector = make(UtilizationDetector, {"queueDepthThreshold": 4})
    assert detector.saturation(table, slots(0), 1.0) == 0.0
    table.inflight_requests[0] = 4
    assert detector.saturation(table, slots(0), 1.0) == pytest.approx(1.0)


def test_kv_scorer_spreads_a_burst_between_scrapes_instead_of_herding() -> None:
    """Both endpoints were scraped once; the first looked emptier. A burst between two scrapes used to go to it
    whole (the scrape does not move until the next one); with fresh KV it spreads as the cache fills."""
    table = pool(2)
    table.kv_usage[:2] = [0.10, 0.20]
    table.cache_num_blocks[:2] = 100
    table.cache_block_size[:2] = 16
    table.metrics_time[:2] = 1.0
    config = load_config_text("plugins: [{type: kv-cache-utilization-scorer}]", "t")
    scheduler = build_scheduler(config, table)
    director = Director(table, scheduler, hooks=scheduler)
    raw = orjson.dumps({"model": "m", "prompt": "x" * 400})  # ~100 tokens, 6 % of a 1,600-token cache
    picks = [director.decide(str(i), {}, parse_openai_body(raw, "/v1/completions"), raw, None) for i in range(10)]
    counts = np.bincount([d.charged_slot for d in picks], minlength=2)
    assert counts.min() >= 4, counts
    for decision in picks:
        director.complete(decision, None)
    assert not table.inflight_prompt_tokens[:2].any()
