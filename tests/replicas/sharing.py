"""Helpers of the replica tests: wait for a condition, run replicas' links for the length of a test."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from epp.shared.link import SharedState


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until `condition` held (fails after `timeout`)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def linked(*states: SharedState) -> AsyncIterator[None]:
    """The replicas' links started and connected to the store; stopped (with a goodbye) afterwards."""
    for state in states:
        await state.start()
    try:
        await until(lambda: all(state.connected is True for state in states))
        yield
    finally:
        for state in states:
            await state.stop()
