"""Background tasks: a failure is logged with its traceback and counted; cancellation and success are not."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from epp import tasks
from epp.datastore.table import EndpointTable
from epp.observability.wiring import install
from epp.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def failures(name: str) -> float:
    child = tasks.FAILURES.children.get((name,))
    return child.value if child is not None else 0.0  # type: ignore[union-attr]


async def test_a_failed_task_is_logged_with_its_traceback_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    before = failures("test-broken")
    with caplog.at_level(logging.ERROR, logger="epp.tasks"):
        task = tasks.spawn(broken(), "test-broken")
        await asyncio.wait([task])
        await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert failures("test-broken") == before + 1
    (record,) = [r for r in caplog.records if r.name == "epp.tasks"]
    assert "test-broken" in record.getMessage() and "boom" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError

    registry = CollectorRegistry()
    install(registry, EndpointTable(4), Settings())
    text = generate_latest(registry).decode()
    assert re.search(r'^epp_background_task_failures_total\{task="test-broken"\} [1-9]', text, re.M), text


async def test_cancelled_and_finished_tasks_are_not_failures(caplog: pytest.LogCaptureFixture) -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    async def fine() -> int:
        return 1

    with caplog.at_level(logging.ERROR, logger="epp.tasks"):
        cancelled = tasks.spawn(forever(), "test-quiet")
        finished = tasks.spawn(fine(), "test-quiet")
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.wait([cancelled, finished])
        await asyncio.sleep(0)
    assert failures("test-quiet") == 0 and finished.result() == 1
    assert not [r for r in caplog.records if r.name == "epp.tasks"]
    assert cancelled not in tasks._running and finished not in tasks._running


def test_every_background_task_of_the_epp_goes_through_spawn() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in (ROOT / "epp").rglob("*.py")
        if path.name != "tasks.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bcreate_task\(|\bensure_future\(", line)
    ]
    assert offenders == []


async def test_task_counts_are_exported_and_follow_the_tasks() -> None:
    registry = CollectorRegistry()
    install(registry, EndpointTable(4), Settings())  # inside the running loop: the loop's tasks are counted too

    def counts() -> tuple[float, float]:
        text = generate_latest(registry).decode()
        background = re.search(r"^epp_background_tasks (\S+)$", text, re.M)
        loop_tasks = re.search(r"^epp_asyncio_tasks (\S+)$", text, re.M)
        assert background is not None and loop_tasks is not None, text
        return float(background.group(1)), float(loop_tasks.group(1))

    before = counts()
    waiting = [tasks.spawn(asyncio.Event().wait(), "test-count") for _ in range(3)]
    await asyncio.sleep(0)
    assert counts() == (before[0] + 3, before[1] + 3)
    for task in waiting:
        task.cancel()
    await asyncio.wait(waiting)
    await asyncio.sleep(0)
    assert counts() == before
