from __future__ import annotations

import pytest

from epp.flowcontrol.queue import BandSettings, CapacityExceeded, FlowQueue, QueueSettings


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
