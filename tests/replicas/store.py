"""A real redis-server for the replica tests, or a skip that names the install command."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from epp.devstack.redis import RedisMissing, RedisServer, server_binary


def store_binary() -> str:
    """redis-server's path; a user who cannot install it gets a skip naming the command (as root the install is
    tried, and must work)."""
    try:
        return server_binary()
    except RedisMissing as exc:
        pytest.skip(str(exc))


def started_store() -> Iterator[RedisServer]:
    with RedisServer(binary=store_binary()) as server:
        yield server
