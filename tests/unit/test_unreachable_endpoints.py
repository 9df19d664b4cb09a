"""Endpoints whose scrapes keep failing get no new requests while another is reachable; SIGTERM hands over."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from epp.app import hand_over
from epp.director import Director
from tests.support.extproc import make_table
from tests.support.least_queue import LeastQueueScheduler


def director_over(scraped_ago: list[float | None], limit: float | None = 2.0) -> Director:
    table = make_table(*(f"10.0.0.{i + 1}:8000" for i in range(len(scraped_ago))))
    now = time.monotonic()
    for slot, ago in enumerate(scraped_ago):
        table.metrics_time[slot] = 0.0 if ago is None else now - ago
    return Director(table, LeastQueueScheduler(seed=1), unreachable_after_s=limit)


def test_an_endpoint_not_scraped_for_longer_than_the_threshold_is_left_out() -> None:
    director = director_over([0.1, 5.0, 0.3])
    assert director.candidates(None).tolist() == [0, 2]
    assert director.candidates(["10.0.0.2:8000", "10.0.0.3:8000"]).tolist() == [2]


def test_never_scraped_endpoints_stay_and_all_lost_means_all_kept() -> None:
    assert director_over([None, 5.0, 0.1]).candidates(None).tolist() == [0, 2]  # a new endpoint has just joined
    assert director_over([5.0, 9.0]).candidates(None).tolist() == [0, 1]  # nothing reachable: fail open
    assert director_over([5.0]).candidates(None).tolist() == [0]
    assert director_over([0.1, 5.0], limit=None).candidates(None).tolist() == [0, 1]  # off


def test_the_pick_avoids_the_lost_endpoint() -> None:
    director = director_over([0.1, 5.0])
    director.table.waiting_queue[:] = np.array([50.0, 0.0] + [0.0] * (director.table.capacity - 2))
    decision = director.decide("r", {":path": "/v1/completions"}, None, b"{}", None)
    assert decision.destination.startswith("10.0.0.1:")  # the least-queued endpoint is the one not answering


async def test_hand_over_waits_while_new_streams_arrive_then_for_one_quiet_period() -> None:
    total = [0]

    async def arrivals() -> None:
        for _ in range(6):
            await asyncio.sleep(0.05)
            total[0] += 1

    feeder = asyncio.create_task(arrivals())
    # a quiet period well above the arrivals' spacing: a busy machine that stalls this process for a few
    # tenths of a second must not look like the proxy going quiet
    waited = await hand_over(lambda: total[0], limit_s=5.0, quiet_s=0.6)
    await feeder
    assert 0.85 <= waited < 2.5  # 0.3 s of arrivals, then 0.6 s without one
    assert await hand_over(lambda: 0, limit_s=0.1, quiet_s=1.0) < 0.5  # the limit caps it


def test_an_endpoint_that_leaves_takes_its_charges_with_it() -> None:
    # its open requests' charges stayed in the freed slot (their release is skipped once the epoch moved on), so
    # the pool's in-flight total never went back to 0 after an endpoint left mid-request
    director = director_over([0.1, 0.1], limit=None)
    table = director.table
    decisions = [director.decide(f"r{i}", {":path": "/v1/completions"}, None, b"{}", None) for i in range(4)]
    assert table.inflight_requests.sum() == 4
    endpoint = table.endpoints[decisions[0].charges[0].slot]
    assert endpoint is not None
    table.remove(endpoint.key)
    left = sum(1 for d in decisions if d.charges[0].slot != decisions[0].charges[0].slot)
    assert table.inflight_requests.sum() == left
    for decision in decisions:
        director.complete(decision, None)
    assert table.inflight_requests.sum() == 0 and table.inflight_tokens.sum() == 0
