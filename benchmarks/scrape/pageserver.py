"""A cheap many-port /metrics server: one process, one event loop, N listening ports, one fixed page.

python -m benchmarks.scrape.pageserver --ports 1000 --base-port 20000 --page tests/fixtures/metrics/vllm.txt
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path
from typing import cast


class _Responder(asyncio.Protocol):
    __slots__ = ("pending", "response", "transport")
    #: responses written by all connections of this process (printed on exit)
    served = 0

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.pending = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        if self.pending:
            data = self.pending + data
        n = data.count(b"\r\n\r\n")
        self.pending = data[data.rfind(b"\r\n\r\n") + 4 :] if n else data
        assert self.transport is not None
        for _ in range(n):
            self.transport.write(self.response)
        _Responder.served += n


def http_response(page: bytes) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\n"
        "content-type: text/plain; version=0.0.4; charset=utf-8\r\n"
        f"content-length: {len(page)}\r\n\r\n"
    )
    return head.encode() + page


async def serve(page: bytes, base_port: int, ports: int, ready: object = None) -> None:
    loop = asyncio.get_running_loop()
    response = http_response(page)
    servers = []
    for i in range(ports):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", base_port + i))
        servers.append(await loop.create_server(lambda: _Responder(response), sock=sock, backlog=64))
    if ready is not None:
        ready.set()  # type: ignore[attr-defined]
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    for server in servers:
        server.close()
    print(f"served {_Responder.served}", flush=True)


def run(page_path: str, base_port: int, ports: int, ready: object = None) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(serve(Path(page_path).read_bytes(), base_port, ports, ready))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ports", type=int, default=1000)
    parser.add_argument("--base-port", type=int, default=20000)
    parser.add_argument("--page", default=os.path.join("tests", "fixtures", "metrics", "vllm.txt"))
    args = parser.parse_args()
    run(args.page, args.base_port, args.ports)


if __name__ == "__main__":
    main()
