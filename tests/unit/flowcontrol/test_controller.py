from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from epp.errors import EppError
from epp.flowcontrol.controller import DISPATCHED, FlowController
from epp.flowcontrol.queue import BandSettings, Item, QueueSettings


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


async def test_stop_returns_when_a_notify_lands_in_the_same_loop_turn_as_the_cancel() -> None:
    # A stream finishing during the drain calls notify() while app.stop cancels the dispatcher; in Python 3.11
    # asyncio.wait_for then swallowed the cancellation and stop() waited forever.
    flow: FlowController[str] = FlowController(QueueSettings(), lambda: 1.0)
    flow.start()
    waiter = asyncio.create_task(flow.admit("t", 0, 1, lambda: "never"))
    await asyncio.sleep(0.05)  # the dispatcher polls a saturated pool

    async def release_then_stop() -> None:
        flow.notify()
        await flow.stop()

    stopping = asyncio.create_task(release_then_stop())
    done, _ = await asyncio.wait([stopping], timeout=2.0)
    if not done:
        assert flow._task is not None
        flow._task.cancel()  # unstick it so the test fails instead of hanging
        await stopping
    assert done, "stop() hung"
    with pytest.raises(EppError, match="flow control stopped"):
        await waiter


async def test_outcomes_carry_the_flow_of_requests_dispatched_at_once() -> None:
    pool = Pool(1)
    outcomes: list[tuple[str, int, str]] = []

    def record(item: Item | None, outcome: str, waited: float, fairness_id: str = "", priority: int = 0) -> None:
        if item is not None:
            fairness_id, priority = item.fairness_id, item.priority
        outcomes.append((fairness_id, priority, outcome))

    flow: FlowController[str] = FlowController(QueueSettings(), pool.saturation, on_outcome=record)
    flow.start()
    await flow.admit("alice", 5, 1, pool.dispatcher("a"))  # not saturated: dispatched without queueing
    waiter = asyncio.create_task(flow.admit("bob", -1, 1, pool.dispatcher("b")))
    await asyncio.sleep(0.01)
    pool.in_flight -= 1
    flow.notify()
    await waiter
    await flow.stop()
    assert outcomes == [("alice", 5, DISPATCHED), ("bob", -1, DISPATCHED)]


class Response:
    """A dispatch result standing in for the request's ProcessingResponses (weakly referenceable)."""


async def test_dispatched_requests_are_not_retained_while_an_older_one_waits() -> None:
    pool = Pool(1)
    pool.in_flight = 1

    def dispatch() -> Response:
        pool.in_flight += 1
        return Response()

    flow: FlowController[Response] = FlowController(QueueSettings(default_ttl=60.0), pool.saturation)
    flow.start()
    starved = asyncio.create_task(flow.admit("t", -10, 1, dispatch))  # holds the earliest deadline throughout
    await asyncio.sleep(0.01)
    results: list[weakref.ref[Response]] = []
    for _ in range(20):
        task = asyncio.create_task(flow.admit("t", 10, 1, dispatch))
        await asyncio.sleep(0)  # queued, in a band above the starved request's
        pool.in_flight -= 1
        flow.notify()
        results.append(weakref.ref(await task))
        del task
        assert len(flow.queue) == 1
    await asyncio.sleep(0)  # the loop's callbacks of the last completion go
    gc.collect()
    assert [ref for ref in results if ref() is not None] == []
    starved.cancel()
    await flow.stop()
