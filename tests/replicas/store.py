"""A real redis-server for the replica tests, or a skip that names the install command."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from epp.devstack.redis import RedisMissing, RedisServer, server_binary


def started_store() -> Iterator[RedisServer]:
    try:
        binary = server_binary()
    except RedisMissing as exc:  # a user who cannot install it; as root the install is tried (and must work)
        pytest.skip(str(exc))
    with RedisServer(binary=binary) as server:
        yield server
