"""More concurrent requests than Envoy's default circuit breakers allow, through the shipped bootstrap.

Each HTTP request is an ext_proc stream to the EPP for as long as it lasts; with the epp cluster's default
breakers (1,024 requests) the 1,025th concurrent request was answered 500 before reaching the EPP."""

from __future__ import annotations

import asyncio
import resource

import pytest

from epp.devstack.envoy import EnvoyProcess

pytestmark = pytest.mark.e2e
CONCURRENT = 1100
BODY = b'{"model":"m","prompt":"held"}'


async def held_requests(port: int) -> list[int]:
    """Opens CONCURRENT requests whose bodies are held back (the EPP holds each stream until its body ends),
    then sends every body; the status of each."""
    connections = []
    for index in range(CONCURRENT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nx-request-id: held-%d\r\n\r\n" % (len(BODY), index)
        )
        connections.append((reader, writer))
    await asyncio.sleep(1.0)  # every stream is open at Envoy and the EPP now
    for _, writer in connections:
        writer.write(BODY)

    async def status(reader: asyncio.StreamReader) -> int:
        line = await asyncio.wait_for(reader.readline(), 60)
        return int(line.split()[1]) if line else 0

    try:
        return list(await asyncio.gather(*(status(reader) for reader, _ in connections)))
    finally:
        for _, writer in connections:
            writer.close()


#: this process holds a client socket per request, and Envoy (which inherits the limit) one per request plus its own
OPEN_FILES_NEEDED = CONCURRENT + 400


def test_more_concurrent_requests_than_envoys_default_breakers_all_succeed(envoy: EnvoyProcess) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # tests/conftest.py raised soft to hard
    if soft != resource.RLIM_INFINITY and soft < OPEN_FILES_NEEDED:
        pytest.skip(
            f"needs {OPEN_FILES_NEEDED} open files but the hard limit is {hard}; as root raise it for this user "
            f"(`nofile` in /etc/security/limits.conf, or `ulimit -Hn {OPEN_FILES_NEEDED}` in the shell running them)"
        )
    statuses = asyncio.run(held_requests(envoy.listener_port))
    assert statuses.count(200) == CONCURRENT, {s: statuses.count(s) for s in set(statuses)}
    assert envoy.stats("cluster.epp.upstream_rq_active_overflow").get("cluster.epp.upstream_rq_active_overflow") == 0
