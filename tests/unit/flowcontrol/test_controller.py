from __future__ import annotations

import asyncio

import pytest

from epp.errors import EppError
from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.queue import BandSettings, QueueSettings


class Pool:
    """A pool with `capacity` slots; saturation = in flight / capacity."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_flight = 0
        self.order: list[str] = []

    def saturation(self) -> float:
        return self.in_flight / self.capacity

    def dispatcher(self, name: str):  # type: ignore[no-untyped-def]
        def dispatch() -> str:
            self.in_flight += 1
            self.order.append(name)
            return name

        return dispatch


async def test_dispatches_at_once_when_not_saturated() -> None:
    pool = Pool(2)
    flow: FlowController[str] = FlowController(QueueSettings(), pool.saturation)
    flow.start()
    assert await flow.admit("t", 0, 1, pool.dispatcher("a")) == "a"
    await flow.stop()


async def test_waits_until_capacity_frees_and_dispatches_on_notify() -> None:
    pool = Pool(1)
    flow: FlowController[str] = FlowController(QueueSettings(), pool.saturation, poll_interval=10.0)
    flow.start()
    await flow.admit("t", 0, 1, pool.dispatcher("a"))
    waiter = asyncio.create_task(flow.admit("t", 0, 1, pool.dispatcher("b")))
    await asyncio.sleep(0.05)
    assert not waiter.done() and len(flow.queue) == 1
    pool.in_flight -= 1
    loop = asyncio.get_running_loop()
    started = loop.time()
    flow.notify()
    assert await waiter == "b"
    assert loop.time() - started < 0.05  # on the notification, not on the 10 s poll
    await flow.stop()


async def test_ttl_expiry_is_503_and_capacity_is_429() -> None:
    pool = Pool(1)
    pool.in_flight = 1
    flow: FlowController[str] = FlowController(QueueSettings(max_requests=1, default_ttl=0.05), pool.saturation)
    flow.start()
    waiter = asyncio.create_task(flow.admit("t", 0, 1, pool.dispatcher("x")))
    await asyncio.sleep(0.01)
    with pytest.raises(EppError) as full:
        await flow.admit("t", 0, 1, pool.dispatcher("y"))
    assert full.value.http_status == 429
    with pytest.raises(EppError) as expired:
        await waiter
    assert expired.value.http_status == 503 and "timed out in queue" in expired.value.message
    await flow.stop()


async def test_client_disconnect_removes_the_request() -> None:
    pool = Pool(1)
    pool.in_flight = 1
    flow: FlowController[str] = FlowController(QueueSettings(), pool.saturation)
    flow.start()
    waiter = asyncio.create_task(flow.admit("t", 0, 1, pool.dispatcher("x")))
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.sleep(0.01)
    assert len(flow.queue) == 0 and flow.cancelled == 1
    await flow.stop()


async def test_round_robin_gives_two_tenants_equal_dispatch_at_10_to_1_load() -> None:
    pool = Pool(1)
    pool.in_flight = 1
    band = BandSettings(0, fairness="round-robin-fairness-policy")
    flow: FlowController[str] = FlowController(QueueSettings(bands=(band,)), pool.saturation)
    flow.start()
    waiters = [asyncio.create_task(flow.admit("heavy", 0, 1, pool.dispatcher("heavy"))) for _ in range(200)]
    waiters += [asyncio.create_task(flow.admit("light", 0, 1, pool.dispatcher("light"))) for _ in range(20)]
    await asyncio.sleep(0.01)
    for _ in range(40):  # complete one request at a time; each completion lets exactly one more in
        pool.in_flight -= 1
        flow.notify()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    first = pool.order[:40]
    assert abs(first.count("heavy") - first.count("light")) <= 4  # equal within 10 %
    for waiter in waiters:
        waiter.cancel()
    await flow.stop()
