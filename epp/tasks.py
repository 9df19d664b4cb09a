"""Background tasks that never end silently.

`spawn(coro, name)` creates the task, keeps it referenced until it ends (a task only the event loop holds
can be garbage-collected mid-run), and when it ends with an exception logs the traceback and counts it in
`epp_background_task_failures_total{task}`. Cancellation is the normal way a background task stops and is
neither logged nor counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.observability.families import FamiliesCollector, Family

log = logging.getLogger("epp.tasks")
T = TypeVar("T")

FAILURES = Family(
    "counter",
    "epp_background_task_failures_total",
    "Background tasks (watches, scrapers, dispatchers, ...) that ended with an exception, by task name.",
    ["task"],
)
#: registered with the app's registry by epp.observability.wiring.install
COLLECTOR = FamiliesCollector([FAILURES])

_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, T], name: str, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Task[T]:
    """Run `coro` as a task named `name` (the metric's label: keep the set of names small)."""
    task = (loop or asyncio.get_running_loop()).create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(_ended)
    return task


def _ended(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if task.cancelled():
        return
    error = task.exception()
    if error is None:
        return
    name = task.get_name()
    FAILURES.value(name).inc()
    log.error("background task %r failed: %s: %s", name, type(error).__name__, error, exc_info=error)


class TaskCountCollector(Collector):
    """Tasks alive right now: the background ones spawned here and, given the serving loop, every task on it
    (one per open ext_proc stream besides them). Read when /metrics is scraped, from the HTTP thread: a
    growing count with a steady load is a leak."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("epp_background_tasks", "Background tasks running.", len(_running))
        if self._loop is not None:
            # all_tasks copies the loop's task set with retries, so another thread may read it
            tasks = len(asyncio.all_tasks(self._loop))
            yield GaugeMetricFamily("epp_asyncio_tasks", "Tasks on the serving event loop.", tasks)
