"""Chunked /metrics answers: trailers, chunk extensions, any split across reads, malformed framing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from epp.datalayer.client import _dechunk
from epp.datalayer.params import CoreMetricsExtractorParams, MetricsDataSourceParams
from epp.datalayer.scraper import ScrapePlane
from epp.datastore.table import Endpoint, EndpointTable
from tests.support.polling import until

from .conftest import PageServer, fixture_page

HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"


def chunked(body: bytes, pieces: int = 3, trailers: bytes = b"X-Checksum: abc\r\nX-Other: 1\r\n") -> bytes:
    step = max(1, len(body) // pieces)
    parts = [body[i : i + step] for i in range(0, len(body), step)]
    framed = b"".join(b"%x;ext=1\r\n" % len(part) + part + b"\r\n" for part in parts)
    return framed + b"0\r\n" + trailers + b"\r\n"


@pytest.mark.parametrize("trailers", [b"", b"X-Checksum: abc\r\n", b"A: 1\r\nB: 2\r\n"])
def test_dechunk_at_every_split(trailers: bytes) -> None:
    body = b"metric_a 1\r\n0\r\n\r\nmetric_b 2\n"  # data that looks like a last chunk
    message = chunked(body, pieces=4, trailers=trailers)
    for cut in range(len(message)):
        assert _dechunk(message[:cut], 0) is None, cut
    assert _dechunk(message, 0) == body


@pytest.mark.parametrize(
    "message",
    [b"zz\r\nab\r\n0\r\n\r\n", b"0x2\r\nab\r\n0\r\n\r\n", b"2\r\nabcd\r\n0\r\n\r\n", b"\r\n", b"1" * 5000, b"-1\r\n"],
)
def test_dechunk_refuses_malformed_framing(message: bytes) -> None:
    with pytest.raises(ValueError):
        _dechunk(message, 0)


class TrailerServer(PageServer):
    """HTTP/1.1 keep-alive /metrics server on 127.0.0.1 answering chunked with trailers, in small pieces."""

    def __init__(self, page: bytes) -> None:
        super().__init__(page)
        self.response = HEAD + chunked(page, pieces=7)
        self.connections = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                response = self.response
                for start in range(0, len(response), 997):  # odd-sized writes, flushed one by one
                    writer.write(response[start : start + 997])
                    await writer.drain()
                    await asyncio.sleep(0)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def trailer_server() -> AsyncIterator[TrailerServer]:
    server = TrailerServer(fixture_page("vllm.txt"))
    await server.start()
    yield server
    await server.close()


async def test_chunked_answer_with_trailers_is_scraped_on_a_kept_alive_connection(
    trailer_server: TrailerServer,
) -> None:
    table = EndpointTable(4)
    plane = ScrapePlane()
    plane.start(table, MetricsDataSourceParams(), CoreMetricsExtractorParams(), 0.02, timeout_s=1.0, mode="inline")
    try:
        port = trailer_server.port
        slot = table.add(Endpoint("127.0.0.1", port, name="a", metrics_port=port))
        await until(lambda: table.metrics_time[slot] > 0)
        assert (table.waiting_queue[slot], table.running_requests[slot], table.kv_usage[slot]) == (3.0, 12.0, 0.4321)
        await until(lambda: trailer_server.requests >= 5)
        assert table.scrape_errors[slot] == 0
        assert trailer_server.connections == 1  # every answer ended where the next one starts
    finally:
        await plane.stop()
