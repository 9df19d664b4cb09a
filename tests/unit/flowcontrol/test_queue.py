from __future__ import annotations

import pytest

from epp.flowcontrol.queue import HEAP_SLACK, BandSettings, CapacityExceeded, FlowQueue, QueueSettings


def drain(queue: FlowQueue) -> list[str]:
    out = []
    while (item := queue.pop()) is not None:
        out.append(item.payload)
    return out


def test_higher_priority_band_first_then_fcfs() -> None:
    queue = FlowQueue(QueueSettings())
    for i, priority in enumerate([0, 5, 0, -1, 5]):
        queue.push(queue.make_item("t", priority, 10, now=float(i), payload=f"{priority}:{i}"))
    assert drain(queue) == ["5:1", "5:4", "0:0", "0:2", "-1:3"]


def test_round_robin_fairness_alternates_flows() -> None:
    band = BandSettings(0, fairness="round-robin-fairness-policy")
    queue = FlowQueue(QueueSettings(bands=(band,)))
    for i in range(6):
        queue.push(queue.make_item("a", 0, 1, now=i, payload=f"a{i}"))
    queue.push(queue.make_item("b", 0, 1, now=10, payload="b0"))
    queue.push(queue.make_item("b", 0, 1, now=11, payload="b1"))
    assert drain(queue)[:5] == ["a0", "b0", "a1", "b1", "a2"]


def test_global_strict_fairness_is_one_global_order() -> None:
    queue = FlowQueue(QueueSettings())
    for i in range(3):
        queue.push(queue.make_item("a", 0, 1, now=i, payload=f"a{i}"))
    queue.push(queue.make_item("b", 0, 1, now=10, payload="b0"))
    assert drain(queue) == ["a0", "a1", "a2", "b0"]


def test_edf_orders_by_deadline() -> None:
    band = BandSettings(0, ordering="edf-ordering-policy")
    queue = FlowQueue(QueueSettings(bands=(band,)))
    queue.push(queue.make_item("a", 0, 1, now=0, ttl=10, payload="late"))
    queue.push(queue.make_item("a", 0, 1, now=1, ttl=2, payload="soon"))
    queue.push(queue.make_item("a", 0, 1, now=2, ttl=0, payload="never"))
    assert drain(queue) == ["soon", "late", "never"]


def test_capacity_limits() -> None:
    queue = FlowQueue(QueueSettings(max_requests=2, bands=(BandSettings(0, max_bytes=100),)))
    queue.push(queue.make_item("a", 0, 60, now=0))
    with pytest.raises(CapacityExceeded, match="priority band 0 maxBytes 100"):
        queue.push(queue.make_item("a", 0, 60, now=0))
    queue.push(queue.make_item("a", 1, 60, now=0))
    with pytest.raises(CapacityExceeded, match="maxRequests 2"):
        queue.push(queue.make_item("a", 1, 1, now=0))


def test_expiry_and_removal() -> None:
    queue = FlowQueue(QueueSettings(default_ttl=5))
    first = queue.make_item("a", 0, 1, now=0, payload="first")
    second = queue.make_item("a", 0, 1, now=1, payload="second")
    third = queue.make_item("a", 0, 1, now=2, payload="third")
    for item in (first, second, third):
        queue.push(item)
    assert queue.remove(second) and not queue.remove(second)
    assert queue.next_deadline() == 5
    assert [i.payload for i in queue.expire(6.5)] == ["first"]
    assert drain(queue) == ["third"]
    assert len(queue) == 0 and queue.bytes == 0


def test_heaps_stay_bounded_while_an_old_item_stays_queued() -> None:
    queue = FlowQueue(QueueSettings(default_ttl=60))
    starved = queue.make_item("batch", -10, 1, now=0)
    queue.push(starved)  # the earliest deadline: taken items behind it never surface in the deadline heap
    behind = queue.make_item("tenant", 0, 1, now=0)
    queue.push(behind)  # the head of its flow: items removed behind it never surface in the flow heap
    for now in range(1, 5001):
        passing = queue.make_item("interactive", 10, 1, now=now)
        queue.push(passing)
        assert queue.pop() is passing
        cancelled = queue.make_item("tenant", 0, 1, now=now)
        queue.push(cancelled)
        assert queue.remove(cancelled)
        assert len(queue._deadlines) <= 2 * len(queue) + HEAP_SLACK
        assert len(queue._bands[0].flows["tenant"].heap) <= 2 + HEAP_SLACK
    assert queue.next_deadline() == 60
    assert [item.fairness_id for item in queue.expire(60.5)] == ["batch", "tenant"]
    assert len(queue) == 0 and queue.bytes == 0
