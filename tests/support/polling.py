"""Waiting in a test for something a background task does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Return once `check()` holds; TimeoutError after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)
