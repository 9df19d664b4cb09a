"""Real HTTP /metrics servers on 127.0.0.1 for the data-layer tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "metrics"


def fixture_page(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class PageServer:
    """Serves `page` (mutable) at any path with HTTP/1.1 keep-alive; `hang` makes it never answer."""

    def __init__(self, page: bytes) -> None:
        self.page = page
        self.status = 200
        self.hang = False
        self.chunked = False
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                if self.hang:
                    continue
                body = self.page
                if self.chunked:
                    half = len(body) // 2
                    payload = b"".join(
                        f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:half], body[half:]) if part
                    )
                    head = f"HTTP/1.1 {self.status} X\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                    writer.write(head + payload + b"0\r\n\r\n")
                else:
                    head = f"HTTP/1.1 {self.status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                    writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def servers() -> AsyncIterator[list[PageServer]]:
    made: list[PageServer] = []
    yield made
    for server in made:
        await server.close()


async def start_server(made: list[PageServer], page: bytes) -> PageServer:
    server = PageServer(page)
    await server.start()
    made.append(server)
    return server
