"""A lean HTTP/1.1 keep-alive scraper over asyncio Protocols, writing results into an EndpointTable.

One `ScrapeWorker` owns a set of targets (table slot -> URL + engine) and scrapes each of them every
`interval_s`; it runs in whichever event loop it is started in (the scrape process, or inline).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from typing import cast

import numpy as np
import numpy.typing as npt

from epp.datalayer.extract import LoraInfo, extract
from epp.datalayer.params import EngineConfig
from epp.datastore.table import EndpointTable
from epp.tasks import spawn

#: (slot, epoch, running adapters, waiting adapters, max_lora) when an endpoint's LoRA state changes
LoraSink = Callable[[int, int, frozenset[str], frozenset[str], float], None]

#: Stats array layout (float64): scrapes attempted to completion, failed scrapes
STAT_SCRAPES, STAT_ERRORS = 0, 1
STATS_LEN = 4
#: Pages bigger than this are refused (a garbled or hostile server must not eat memory).
MAX_PAGE = 16 * 1024 * 1024
#: Sub-ticks per interval: targets are spread over them so requests do not all leave at once.
SUBTICKS = 10


class _Conn(asyncio.Protocol):
    __slots__ = ("_chunks", "_have", "_header_end", "_length", "_mode", "_status", "target", "transport", "worker")

    def __init__(self, worker: ScrapeWorker, target: Target) -> None:
        self.worker = worker
        self.target = target
        self.transport: asyncio.Transport | None = None
        self._reset()

    def _reset(self) -> None:
        self._chunks: list[bytes] = []
        self._have = 0
        self._header_end = -1
        self._length = -1
        self._mode = 0  # 0 = content-length, 1 = chunked, 2 = until close
        self._status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        target = self.target
        current = target.conn is self
        if current:
            target.conn = None
        if self._mode == 2 and self._header_end >= 0:
            body = b"".join(self._chunks)[self._header_end :]
            ok = self._status_ok()
            self._reset()
            self.worker._done(target, ok, body)
        elif current and target.busy:
            self._reset()
            self.worker._failed(target)

    def _status_ok(self) -> bool:
        return self._status == 200

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._have += len(data)
        if self._header_end < 0:
            buf = b"".join(self._chunks) if len(self._chunks) > 1 else data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if self._have > 65536:
                    self._abort()
                return
            self._chunks = [buf]
            if not self._parse_head(buf[: end + 2]):
                self._abort()
                return
            self._header_end = end + 4
        if self._have > MAX_PAGE:
            self._abort()
            return
        if self._mode == 0:
            if self._have >= self._header_end + self._length:
                buf = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                body = buf[self._header_end : self._header_end + self._length]
                ok = self._status_ok()
                self._reset()
                self.worker._done(self.target, ok, body)
        elif self._mode == 1:
            buf = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
            self._chunks = [buf]
            try:
                dechunked = _dechunk(buf, self._header_end)
            except ValueError:  # the connection is out of step with the server: drop it
                self._abort()
                return
            if dechunked is None:
                return
            ok = self._status_ok()
            self._reset()
            self.worker._done(self.target, ok, dechunked)

    def eof_received(self) -> bool | None:
        return None

    def _parse_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            return False
        try:
            self._status = int(parts[1])
        except ValueError:
            return False
        self._mode = 2
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                try:
                    self._length = int(value.strip())
                except ValueError:
                    return False
                self._mode = 0
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                self._mode = 1
        return True

    def _abort(self) -> None:
        self._reset()
        if self.transport is not None:
            self.transport.abort()
        if self.target.conn is self:
            self.target.conn = None
        self.worker._failed(self.target)


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
#: a chunk-size line (with extensions) longer than this is refused
_MAX_CHUNK_LINE = 4096


def _dechunk(buf: bytes, pos: int) -> bytes | None:
    """The body of a chunked message starting at `pos`: None while incomplete; ValueError when malformed.

    RFC 9112 7.1: chunks of `size[;ext]CRLF data CRLF`, a last chunk `0[;ext]CRLF`, then trailer fields
    (each `name: value CRLF`, ignored) and an empty line."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            if len(buf) - pos > _MAX_CHUNK_LINE:
                raise ValueError("chunk-size line too long")
            return None
        digits = buf[pos:eol].split(b";", 1)[0].strip(b" \t")
        if not digits or not _HEX_DIGITS.issuperset(digits):
            raise ValueError(f"bad chunk size {buf[pos:eol][:40]!r}")
        size = int(digits, 16)
        if size == 0:
            # the CRLF ending the last-chunk line, then trailer lines, end at the first empty line
            if buf.find(b"\r\n\r\n", eol) < 0:
                return None
            return b"".join(parts)
        start = eol + 2
        end = start + size
        if len(buf) < end + 2:
            return None
        if buf[end : end + 2] != b"\r\n":
            raise ValueError("chunk data not followed by CRLF")
        parts.append(buf[start:end])
        pos = end + 2


class Target:
    __slots__ = (
        "busy",
        "conn",
        "engine",
        "epoch",
        "hints",
        "host",
        "inflight_prompt_tokens",
        "inflight_requests",
        "lora",
        "port",
        "request",
        "slot",
        "started",
    )

    def __init__(self, slot: int, epoch: int, host: str, port: int, path: str, engine: EngineConfig) -> None:
        self.slot = slot
        #: the table's epoch for the slot when this endpoint was assigned to it
        self.epoch = float(epoch)
        self.host = host
        self.port = port
        self.engine = engine
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {hostport}\r\nUser-Agent: epp-scraper\r\nAccept: text/plain\r\n\r\n".encode()
        )
        self.hints: dict[bytes, int] = {}
        self.conn: _Conn | None = None
        self.busy = False
        self.started = 0.0
        #: the EPP's in-flight columns for the slot when this round's request was sent (see epp.datastore.fresh)
        self.inflight_requests = 0.0
        self.inflight_prompt_tokens = 0.0
        self.lora: LoraInfo | None = None


class ScrapeWorker:
    """Scrapes its targets every `interval_s` and writes the table's scraped columns in place."""

    def __init__(
        self,
        table: EndpointTable,
        interval_s: float,
        timeout_s: float,
        lora_sink: LoraSink,
        stats: npt.NDArray[np.float64] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.table = table
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.lora_sink = lora_sink
        self.stats = stats if stats is not None else np.zeros(STATS_LEN, dtype=np.float64)
        self.tls = tls
        self.targets: dict[int, Target] = {}
        self._buckets: list[dict[int, Target]] = [{} for _ in range(SUBTICKS)]
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # column views, bound once
        self._waiting = table.waiting_queue
        self._running = table.running_requests
        self._kv = table.kv_usage
        self._bsize = table.cache_block_size
        self._nblocks = table.cache_num_blocks
        self._mtime = table.metrics_time
        self._errors = table.scrape_errors
        self._epoch = table.epoch
        self._inflight = table.inflight_requests
        self._inflight_prompt = table.inflight_prompt_tokens
        self._scrape_inflight = table.scrape_inflight_requests
        self._scrape_inflight_prompt = table.scrape_inflight_prompt_tokens

    # --- membership ---------------------------------------------------------------------------

    def set_target(self, slot: int, epoch: int, host: str, port: int, path: str, engine: EngineConfig) -> None:
        """Scrape `host:port` into `slot` while the table's epoch for the slot is `epoch`."""
        self.remove_target(slot)
        target = Target(slot, epoch, host, port, path, engine)
        self.targets[slot] = target
        self._buckets[slot % SUBTICKS][slot] = target

    def remove_target(self, slot: int) -> None:
        target = self.targets.pop(slot, None)
        if target is None:
            return
        self._buckets[slot % SUBTICKS].pop(slot, None)
        conn = target.conn
        target.conn = None
        if conn is not None and conn.transport is not None:
            conn.transport.abort()

    # --- running -------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = spawn(self._run(), "scrape", self._loop)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for slot in list(self.targets):
            self.remove_target(slot)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        step = self.interval_s / SUBTICKS
        tick = 0
        next_at = loop.time()
        while True:
            now = time.monotonic()
            for target in list(self._buckets[tick % SUBTICKS].values()):
                if target.busy:
                    if now - target.started > self.timeout_s:
                        self._timeout(target)
                    continue
                self._fire(target, now)
            tick += 1
            next_at += step
            delay = next_at - loop.time()
            if delay < -self.interval_s:  # fell far behind: do not try to catch up in a burst
                next_at = loop.time()
                delay = 0.0
            await asyncio.sleep(max(delay, 0.0))

    def _fire(self, target: Target, now: float) -> None:
        target.busy = True
        target.started = now
        target.inflight_requests = float(self._inflight[target.slot])
        target.inflight_prompt_tokens = float(self._inflight_prompt[target.slot])
        conn = target.conn
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            conn.transport.write(target.request)
            return
        assert self._loop is not None
        spawn(self._connect(target), "scrape-connect", self._loop)

    async def _connect(self, target: Target) -> None:
        assert self._loop is not None
        conn = _Conn(self, target)
        try:
            await self._loop.create_connection(lambda: conn, target.host, target.port, ssl=self.tls)
        except (OSError, ssl.SSLError):
            if self.targets.get(target.slot) is target:
                self._failed(target)
            return
        if self.targets.get(target.slot) is not target or not target.busy or target.conn is not None:
            # removed, timed out, or another connection already carries this round's request
            if conn.transport is not None:
                conn.transport.abort()
            return
        target.conn = conn
        assert conn.transport is not None
        conn.transport.write(target.request)

    def _timeout(self, target: Target) -> None:
        conn = target.conn
        target.conn = None
        if conn is not None and conn.transport is not None:
            conn.transport.abort()
        self._failed(target)

    def _failed(self, target: Target) -> None:
        if not target.busy:
            return
        target.busy = False
        if self.targets.get(target.slot) is not target or self._epoch[target.slot] != target.epoch:
            return
        self.stats[STAT_SCRAPES] += 1
        self.stats[STAT_ERRORS] += 1
        self._errors[target.slot] += 1

    def _undo(self, slot: int) -> None:
        columns = (self._waiting, self._running, self._kv, self._bsize, self._nblocks, self._mtime)
        for column in (*columns, self._scrape_inflight, self._scrape_inflight_prompt):
            column[slot] = 0.0

    def _done(self, target: Target, ok: bool, body: bytes) -> None:
        if not target.busy:
            return
        target.busy = False
        slot = target.slot
        if self.targets.get(slot) is not target or self._epoch[slot] != target.epoch:
            return  # removed, or the slot changed hands before this process heard of it
        self.stats[STAT_SCRAPES] += 1
        if ok:
            try:
                ex = extract(body, target.engine, target.hints)
            except Exception:  # a garbled page must never kill the scraper
                ex = None
            if ex is not None and ex.any():
                if ex.waiting is not None:
                    self._waiting[slot] = ex.waiting
                if ex.running is not None:
                    self._running[slot] = ex.running
                if ex.kv_usage is not None:
                    self._kv[slot] = ex.kv_usage
                if ex.block_size is not None:
                    self._bsize[slot] = ex.block_size
                if ex.num_blocks is not None:
                    self._nblocks[slot] = ex.num_blocks
                self._scrape_inflight[slot] = target.inflight_requests
                self._scrape_inflight_prompt[slot] = target.inflight_prompt_tokens
                self._mtime[slot] = time.monotonic()
                if self._epoch[slot] != target.epoch:
                    # the serving process reassigned the slot while this wrote: its zeroing may have
                    # come first, so put the row back to the state it gives a new endpoint
                    self._undo(slot)
                    return
                if ex.lora is not None and ex.lora != target.lora:
                    target.lora = ex.lora
                    self.lora_sink(slot, int(target.epoch), *ex.lora)
                return
        self.stats[STAT_ERRORS] += 1
        self._errors[slot] += 1
