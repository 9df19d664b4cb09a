"""Flow-control figures: memory of 10,000 queued requests, dispatch latency once capacity frees, and the
dispatch share of two tenants offering 10:1 load under round-robin fairness.

Runs the real FlowController on an asyncio (uvloop) loop with a pool whose saturation is in-flight /
capacity; each waiting request is an awaiting task, as in the server (a gRPC stream awaiting its turn).
`python benchmarks/admission/run.py [--queued 10000]`
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import tracemalloc

import uvloop

from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.queue import BandSettings, QueueSettings


class Pool:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_flight = capacity  # start saturated
        self.dispatch_times: list[float] = []
        self.order: list[str] = []

    def saturation(self) -> float:
        return self.in_flight / self.capacity

    def dispatcher(self, tenant: str):  # type: ignore[no-untyped-def]
        def dispatch() -> str:
            self.in_flight += 1
            self.dispatch_times.append(time.perf_counter())
            self.order.append(tenant)
            return tenant

        return dispatch


async def queued_memory(count: int) -> tuple[float, float]:
    pool = Pool(1)
    flow: FlowController[str] = FlowController(QueueSettings(), pool.saturation, poll_interval=3600)
    flow.start()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    tasks = [asyncio.create_task(flow.admit(f"tenant-{i % 10}", 0, 1024, pool.dispatcher("x"))) for i in range(count)]
    await asyncio.sleep(0.1)
    enqueue_s = time.perf_counter() - started
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(flow.queue) == count
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await flow.stop()
    return held / count, enqueue_s / count * 1e6


async def dispatch_latency(samples: int) -> list[float]:
    """Time from `notify()` after a completion to the waiting request's dispatch, with 10,000 queued."""
    pool = Pool(1)
    flow: FlowController[str] = FlowController(QueueSettings(), pool.saturation, poll_interval=3600)
    flow.start()
    tasks = [asyncio.create_task(flow.admit("t", 0, 1024, pool.dispatcher("x"))) for _ in range(10_000)]
    await asyncio.sleep(0.1)
    latencies = []
    for _ in range(samples):
        done = len(pool.dispatch_times)
        pool.in_flight -= 1
        started = time.perf_counter()
        flow.notify()
        while len(pool.dispatch_times) == done:
            await asyncio.sleep(0)
        latencies.append((pool.dispatch_times[-1] - started) * 1e6)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await flow.stop()
    return latencies


async def fairness(dispatches: int) -> tuple[int, int]:
    pool = Pool(4)
    band = BandSettings(0, fairness="round-robin-fairness-policy")
    flow: FlowController[str] = FlowController(QueueSettings(bands=(band,)), pool.saturation, poll_interval=3600)
    flow.start()
    tasks = []
    for i in range(dispatches * 10):  # offered 10:1, interleaved arrivals; both stay backlogged
        tasks.append(asyncio.create_task(flow.admit("heavy", 0, 1, pool.dispatcher("heavy"))))
        if i % 10 == 0:
            tasks.append(asyncio.create_task(flow.admit("light", 0, 1, pool.dispatcher("light"))))
    await asyncio.sleep(0.05)
    while len(pool.order) < dispatches:
        pool.in_flight -= 1
        flow.notify()
        await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await flow.stop()
    window = pool.order[:dispatches]
    return window.count("heavy"), window.count("light")


async def main_async(queued: int) -> None:
    per_request, enqueue_us = await queued_memory(queued)
    latencies = await dispatch_latency(2000)
    window = 200
    heavy, light = await fairness(window)
    q = statistics.quantiles(latencies, n=100)
    print(
        f"queued requests: {queued:,}; memory held per queued request: {per_request:,.0f} B "
        f"({per_request * queued / 2**20:.1f} MiB total, incl. the awaiting task); enqueue {enqueue_us:.1f} µs each"
    )
    print(
        f"dispatch latency after capacity frees (10,000 queued, {len(latencies)} samples): "
        f"p50 {statistics.median(latencies):.1f} µs, p99 {q[98]:.1f} µs"
    )
    print(
        f"round-robin fairness, 10:1 offered load, first {window} dispatches while saturated: "
        f"heavy {heavy}, light {light} (light/heavy = {light / heavy:.3f}; both tenants stay backlogged)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queued", type=int, default=10_000)
    args = parser.parse_args()
    uvloop.run(main_async(args.queued))


if __name__ == "__main__":
    main()
