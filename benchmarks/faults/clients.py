"""Clients of the fault benchmark and the soak: a steady open-loop load (benchmarks/routing's streaming request
and result record) and the hostile ones (clients that disconnect mid-stream, streams that never send their
body, huge bodies), all through Envoy's listener on 127.0.0.1."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "routing"))

from loadgen import Result, _stream
from workloads import Request

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
MAX_LAG_S = 1.0


@dataclass
class Sent:
    id: str
    sent: float  # time.monotonic() when sent
    result: Result
    done: float = 0.0


@dataclass
class SteadyLoad:
    """`rate` streaming completions per second (evenly spaced, open loop) until stopped; each carries an
    `x-load-id` that Envoy's access log repeats, so it can be bound to the endpoint it was routed to."""

    port: int
    rate: float
    prefix: str = "steady"
    timeout: float = 30.0
    max_tokens: int = 8
    sent: list[Sent] = field(default_factory=list)
    #: sends dropped because this process fell more than MAX_LAG_S behind the schedule (a stalled client must not
    #: turn a steady load into a burst when it wakes)
    skipped: int = 0
    _halt: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="steady-load", daemon=True)
        self._thread.start()

    def stop(self, grace: float | None = None) -> None:
        """Stops sending and waits (up to `grace`, default the request timeout) for the requests out."""
        self._halt.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5 if grace is None else grace)

    async def _run(self) -> None:
        url = f"http://127.0.0.1:{self.port}"
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            tasks: set[asyncio.Task[None]] = set()
            started = time.monotonic()
            index = 0
            while not self._halt.is_set():
                due = started + index / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -MAX_LAG_S:
                    self.skipped += 1
                    index += 1
                    continue
                request_id = f"{self.prefix}-{index}"
                request = Request(
                    {
                        "model": self.model_for(index),
                        "prompt": f"request {index}: say something",
                        "max_tokens": self.max_tokens,
                        "stream": True,
                        "stream_options": {"include_usage": True},
                    },
                    headers={"x-load-id": request_id},
                )
                record = Sent(request_id, time.monotonic(), Result("steady", False, 0, 0.0, 0.0, float("nan"), 0.0, ""))
                self.sent.append(record)
                task = asyncio.create_task(self._one(session, url, request, record))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                index += 1
            if tasks:
                await asyncio.wait(tasks, timeout=self.timeout + 2)

    def model_for(self, index: int) -> str:
        return MODEL

    async def _one(self, session: aiohttp.ClientSession, url: str, request: Request, record: Sent) -> None:
        await _stream(session, url, request, self.timeout, record.result)
        record.done = time.monotonic()


# --- hostile clients ------------------------------------------------------------------------------------------


def _request_head(path: str, length: int, request_id: str, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: inference\r\ncontent-type: application/json\r\n"
        f"content-length: {length}\r\nx-load-id: {request_id}\r\n{extra}\r\n"
    ).encode()


def _body(max_tokens: int, size: int = 0) -> bytes:
    prompt = "x" * max(1, size - 100) if size else "tell me a long story"
    return (f'{{"model":"{MODEL}","prompt":"{prompt}","max_tokens":{max_tokens},"stream":true}}').encode()


async def disconnect_mid_stream(port: int, total: int, concurrency: int, tag: str) -> dict[str, int]:
    """`total` clients, `concurrency` at a time: each sends a streaming request and closes its connection once
    the first response bytes arrive (or after 2 s)."""
    outcomes = {"got_bytes": 0, "no_bytes": 0, "connect_failed": 0}
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with gate:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                outcomes["connect_failed"] += 1
                return
            body = _body(200)
            writer.write(_request_head("/v1/completions", len(body), f"{tag}-{index}") + body)
            try:
                got = await asyncio.wait_for(reader.read(256), 2.0)
                outcomes["got_bytes" if got else "no_bytes"] += 1
            except (TimeoutError, OSError):
                outcomes["no_bytes"] += 1
            writer.transport.abort()  # a reset, as a client that goes away does

    await asyncio.gather(*(one(i) for i in range(total)))
    return outcomes


async def headers_without_body(port: int, total: int, hold_s: float, tag: str) -> dict[str, int]:
    """`total` connections that each send request headers promising a body and then send nothing; held open
    together for up to `hold_s` seconds. Counts how each ended: answered by the proxy (and with what class of
    status), or still open when the client gave up."""
    outcomes: dict[str, int] = {"connect_failed": 0, "still_open": 0}
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for index in range(total):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            outcomes["connect_failed"] += 1
            continue
        writer.write(_request_head("/v1/completions", 1000, f"{tag}-{index}"))
        opened.append((reader, writer))
        if index % 500 == 499:
            await asyncio.sleep(0.05)  # let the proxy accept

    async def wait_answer(reader: asyncio.StreamReader, deadline: float) -> str:
        try:
            line = await asyncio.wait_for(reader.readline(), max(0.1, deadline - time.monotonic()))
        except (TimeoutError, OSError):
            return "still_open"
        parts = line.split()
        return f"answered_{parts[1].decode()[0]}xx" if len(parts) > 1 else "closed_without_answer"

    deadline = time.monotonic() + hold_s
    for result in await asyncio.gather(*(wait_answer(reader, deadline) for reader, _ in opened)):
        outcomes[result] = outcomes.get(result, 0) + 1
    for _, writer in opened:
        writer.transport.abort()
    return outcomes


async def big_body(port: int, size: int, tag: str) -> tuple[int, float]:
    """One request whose body is `size` bytes (a long prompt), sent in 1 MiB writes; (HTTP status, seconds)."""
    started = time.monotonic()
    body = _body(4, size)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request_head("/v1/completions", len(body), tag))
    status = 0
    try:
        for offset in range(0, len(body), 1 << 20):
            writer.write(body[offset : offset + (1 << 20)])
            await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 120)
        parts = line.split()
        status = int(parts[1]) if len(parts) > 1 else 0
    except (OSError, TimeoutError):
        # the proxy may answer (413) and close before the whole body is written
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            parts = line.split()
            status = int(parts[1]) if len(parts) > 1 else 0
        except (OSError, TimeoutError):
            status = 0
    writer.transport.abort()
    return status, time.monotonic() - started
