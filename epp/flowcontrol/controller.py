"""Flow control on the event loop: requests wait in the FlowQueue while the pool is saturated.

`admit()` dispatches at once when nothing is queued and the pool is not saturated; otherwise the request
waits on a future. One dispatcher task pops requests in policy order while saturation < 1.0 and runs each
request's dispatch callback synchronously, so the in-flight accounting of one dispatch is visible to the
saturation check of the next. It wakes on `notify()` (a request completed, new endpoints, a new arrival),
at the next TTL deadline, and — only while requests wait on a saturated pool — every `poll_interval`
seconds to see scraped load fall. A waiting request costs a heap entry and a future, no CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from epp.errors import EppError
from epp.flowcontrol.queue import CapacityExceeded, FlowQueue, Item, QueueSettings
from epp.tasks import spawn

log = logging.getLogger("epp.flowcontrol")
T = TypeVar("T")
#: queue outcomes (the `outcome` label of the flow-control metrics)
DISPATCHED = "Dispatched"
REJECTED_CAPACITY = "RejectedCapacity"
EVICTED_TTL = "EvictedTTL"
EVICTED_CANCELLED = "EvictedContextCancelled"


class OutcomeHook(Protocol):
    def __call__(
        self, item: Item | None, outcome: str, waited: float, fairness_id: str = "", priority: int = 0
    ) -> None:
        """`item` is None when the request never queued; its flow is then (fairness_id, priority)."""


class FlowController(Generic[T]):
    def __init__(
        self,
        settings: QueueSettings,
        saturation: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
        poll_interval: float = 0.02,
        on_outcome: OutcomeHook | None = None,
    ) -> None:
        self.queue = FlowQueue(settings)
        #: called for every admission with (item or None when it never queued, outcome, seconds waited,
        #: fairness id, priority)
        self.on_outcome = on_outcome
        self._saturation = saturation
        self.saturation = saturation
        self._clock = clock
        self.poll_interval = poll_interval
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dispatched = 0
        self.rejected = 0
        self.expired = 0
        self.cancelled = 0

    def start(self) -> None:
        self._task = spawn(self._run(), "flow-control-dispatch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while (item := self.queue.pop()) is not None:
            _fail(item, EppError("ServiceUnavailable", "flow control stopped while the request waited"))

    def notify(self) -> None:
        """Capacity may have changed: let the dispatcher look again."""
        if len(self.queue):
            self._wakeup.set()

    async def admit(self, fairness_id: str, priority: int, size: int, dispatch: Callable[[], T]) -> T:
        """Run `dispatch` now or once the request's turn comes; raises EppError 429 (full) / 503 (TTL)."""
        if len(self.queue) == 0 and self._saturation() < 1.0:
            self.dispatched += 1
            self._outcome(None, DISPATCHED, 0.0, fairness_id, priority)
            return dispatch()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        item = self.queue.make_item(fairness_id, priority, size, self._clock(), payload=(future, dispatch))
        try:
            self.queue.push(item)
        except CapacityExceeded as exc:
            self.rejected += 1
            self._outcome(item, REJECTED_CAPACITY, 0.0)
            raise EppError("ResourceExhausted", f"request rejected by flow control: {exc}") from None
        self._wakeup.set()
        try:
            return await future
        except asyncio.CancelledError:
            if self.queue.remove(item):
                item.payload = None
                self.cancelled += 1
                self._outcome(item, EVICTED_CANCELLED, self._clock() - item.arrival)
            raise

    def _outcome(
        self, item: Item | None, outcome: str, waited: float, fairness_id: str = "", priority: int = 0
    ) -> None:
        if self.on_outcome is not None:
            self.on_outcome(item, outcome, waited, fairness_id, priority)

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            now = self._clock()
            for item in self.queue.expire(now):
                self.expired += 1
                waited = now - item.arrival
                self._outcome(item, EVICTED_TTL, waited)
                _fail(item, EppError("ServiceUnavailable", f"request timed out in queue: waited {waited:.3f}s"))
            while len(self.queue) and self._saturation() < 1.0:
                next_item = self.queue.pop()
                assert next_item is not None
                self._dispatch(next_item)
            timeout = self.queue.next_deadline() - self._clock()
            if len(self.queue):
                timeout = min(timeout, self.poll_interval)
            # Not asyncio.wait_for: in Python 3.11 it returns normally when the event is set in the same loop
            # turn as the task is cancelled, and the cancellation is lost.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if timeout == math.inf else max(timeout, 0.0)):
                    await self._wakeup.wait()

    def _dispatch(self, item: Item) -> None:
        # A dispatched item may outlive its wait in the queue's heaps: it must not keep the result alive.
        future, dispatch = item.payload
        item.payload = None
        if future.done():
            return
        self.dispatched += 1
        self._outcome(item, DISPATCHED, self._clock() - item.arrival)
        try:
            future.set_result(dispatch())
        except EppError as error:
            future.set_exception(error)
        except Exception as error:  # a bug in dispatch must not kill the dispatcher
            log.exception("dispatch failed")
            future.set_exception(error)


def _fail(item: Item, error: EppError) -> None:
    future = item.payload[0]
    item.payload = None
    if not future.done():
        future.set_exception(error)
