"""The store connection against a real redis-server: password and database on connect, pipelined replies,
errors and an unreachable store as StoreError, and reconnection on the next call."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.devstack.envoy import free_port
from epp.devstack.redis import RedisServer
from epp.shared.settings import parse_shared_state
from epp.shared.store import StoreConnection, StoreError, pack
from tests.replicas.store import store_binary


def test_commands_are_packed_as_resp_arrays() -> None:
    assert pack(["XADD", b"k\r\n", 7]) == b"*3\r\n$4\r\nXADD\r\n$3\r\nk\r\n\r\n$1\r\n7\r\n"


async def test_password_file_database_and_pipelined_replies(tmp_path: Path) -> None:
    with RedisServer(binary=store_binary(), password="s3cret") as server:
        secret = tmp_path / "password"
        secret.write_text("s3cret\n")
        settings = parse_shared_state(f"redis://127.0.0.1:{server.port}/3", str(secret))
        connection = StoreConnection(settings, 2.0, "test")
        try:
            replies = await connection.call(["SET", "k", "v"], ["GET", "k"], ["CLIENT", "GETNAME"])
            assert replies == [b"OK", b"v", b"test"]
            [info] = await connection.call(["CLIENT", "INFO"])
            assert b" db=3 " in info
            with pytest.raises(StoreError, match=r"the store answered: WRONGTYPE"):
                await connection.call(["XADD", "k", "*", "f", "v"])
            assert await connection.call(["GET", "k"]) == [b"v"]  # reconnected after the error
        finally:
            await connection.close()
        wrong = StoreConnection(parse_shared_state(f"redis://:nope@127.0.0.1:{server.port}/0"), 2.0)
        with pytest.raises(StoreError, match=r"WRONGPASS|invalid"):
            await wrong.call(["PING"])


async def test_an_unreachable_store_is_a_store_error() -> None:
    connection = StoreConnection(parse_shared_state(f"redis://127.0.0.1:{free_port()}/0"), 1.0)
    with pytest.raises(StoreError, match=r"ConnectionRefused|Errno"):
        await connection.call(["PING"])
    assert not connection.connected
