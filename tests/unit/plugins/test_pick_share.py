"""plugins/pick_share.py: recent pick shares, the shortfall below the floor, and the scorer's pull towards it."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from epp.config.schema import load_config_text
from epp.director import Director
from epp.plugins.latency import PredictedTTFTProducer
from epp.plugins.pick_share import (
    SHARE_FLOOR,
    STARVED_PULL,
    WARMUP_PER_ENDPOINT,
    WINDOW_PER_ENDPOINT,
    PickShare,
)
from epp.requests.openai import parse_openai_body
from epp.scheduling.framework import build_scheduler
from tests.support.plugins import pool

CANDIDATES = np.arange(4, dtype=np.int64)


def test_no_shortfall_while_warming_up_or_while_every_share_is_above_the_floor() -> None:
    share = PickShare(4)
    for _ in range(WARMUP_PER_ENDPOINT * 4 - 1):
        share.picked(0, 4)  # one endpoint takes everything, but the pool has only just started
    assert share.shortfall(CANDIDATES) is None
    share = PickShare(4)
    for i in range(WARMUP_PER_ENDPOINT * 4 * 3):
        share.picked(i % 4, 4)
    assert share.shortfall(CANDIDATES) is None


def test_an_endpoint_below_the_floor_falls_short_by_how_far_it_is_below() -> None:
    share = PickShare(4)
    for i in range(400):
        share.picked(i % 3, 4)  # endpoint 3 never
    short = share.shortfall(CANDIDATES)
    assert short is not None
    assert short.tolist()[:3] == [0.0, 0.0, 0.0]
    assert short[3] == pytest.approx(100.0)  # none at all: as far short as it is counted
    for _ in range(20):  # endpoint 3 catches up: its shortfall shrinks
        share.picked(3, 4)
    after = share.shortfall(CANDIDATES)
    assert after is not None and 0 < after[3] < 100
    floor = SHARE_FLOOR * share.recent[:4].max()
    assert after[3] == pytest.approx((floor - share.recent[3]) / share.recent[3])


def test_old_picks_weigh_half_after_the_window() -> None:
    share = PickShare(2)
    share.picked(0, 2)
    first = share.weight
    for _ in range(int(WINDOW_PER_ENDPOINT * 2)):
        share.picked(1, 2)
    assert share.weight / first == pytest.approx(2.0)


def test_weights_are_rescaled_before_they_overflow_and_shares_do_not_change() -> None:
    share = PickShare(2)
    share.weight = 1e150
    share.recent[:] = [3e150, 1e150]
    share.picks = 1000
    share.picked(1, 2)
    assert share.weight < 2.0 and np.isfinite(share.recent).all()
    assert share.recent[0] / share.recent[1] == pytest.approx(3e150 / (1e150 + 1e150 * 2 ** (1 / 64)), rel=1e-9)


def test_a_new_endpoint_starts_at_the_floor() -> None:
    share = PickShare(3)
    share.recent[:] = [10.0, 5.0, 0.0]
    share.reset(2)
    assert share.recent[2] == pytest.approx(10.0 * SHARE_FLOOR)


CONFIG = """
plugins:
- type: predicted-ttft-producer
  parameters: {slownessRate: 0.2}
- type: predicted-ttft-scorer
schedulingProfiles:
- name: default
  plugins: [{pluginRef: predicted-ttft-scorer}]
"""


def test_a_slow_endpoint_keeps_a_share_of_the_picks() -> None:
    """Endpoint 1 is three times slower and endpoint 0 holds the prompt: the prediction alone sends it nothing;
    the pull keeps it near the floor of endpoint 0's recent picks."""
    table = pool(2)
    scheduler = build_scheduler(load_config_text(CONFIG, "t"), table)
    producer = scheduler.plugins["predicted-ttft-producer"]
    assert isinstance(producer, PredictedTTFTProducer)
    producer.model.set_slowness(1, 3.0)
    director = Director(table, scheduler, hooks=scheduler)
    director.clock = producer.clock = lambda: 1000.0  # no time passes: nothing is learned, the slowness stays
    raw = orjson.dumps({"model": "m", "prompt": "x" * 400})
    picks = [0, 0]
    for i in range(600):
        decision = director.decide(f"r{i}", {}, parse_openai_body(raw, "/v1/completions"), raw, None)
        picks[decision.charged_slot] += 1
        director.first_chunk(decision, streamed=True)
        director.complete(decision, None)
    assert picks[1] > 0
    # both warm, endpoint 1 is priced 3x: it is picked once 1 + STARVED_PULL x shortfall reaches 3
    late = producer.share.recent
    expected = SHARE_FLOOR / (1 + 2 / STARVED_PULL)
    assert expected - 0.05 < late[1] / late[0] < expected + 0.05


def test_picks_a_peer_made_count_as_they_are_heard_of() -> None:
    share = PickShare(2)
    share.picked(0, 2)
    share.total[1] += 3.0  # what epp.shared folds in: a peer picked endpoint 1 three times
    share.peers_picked(1, 2)
    assert share.picks == 4 and share.seen.tolist() == [1.0, 3.0]
    assert share.recent[1] > 3 * share.recent[0] * 0.99
    share.total[1] -= 3.0  # the peer left: its part of the total goes, the picks it made stay counted
    share.peers_picked(1, 2)
    assert share.picks == 4 and share.seen[1] == 0.0 and share.recent[1] > 0
