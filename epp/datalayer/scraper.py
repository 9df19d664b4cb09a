"""The scrape plane: keeps every endpoint's scraped columns current, off the serving core.

In 'process' mode a child process (spawned) maps the table's shared-memory buffer, scrapes every
endpoint with the lean client in `client.py` and writes the numeric columns in place. The parent sends
membership changes down a pipe; the child sends LoRA set changes (rare) back, which the parent applies
with `table.set_lora` from a reader registered on its event loop. 'inline' mode runs the same worker in
the caller's event loop (tests, small pools).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing as mp
import os
import secrets
import ssl
import threading
import weakref
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from epp.datalayer.client import STAT_ERRORS, STAT_SCRAPES, STATS_LEN, ScrapeWorker
from epp.datalayer.params import CoreMetricsExtractorParams, MetricsDataSourceParams
from epp.datastore.table import Endpoint, EndpointTable

Mode = Literal["process", "inline"]

TABLE_MEMORY_PREFIX = "epp-table-"
_shm_of: weakref.WeakKeyDictionary[EndpointTable, SharedMemory] = weakref.WeakKeyDictionary()


class _TableMemory(SharedMemory):
    """The table's block. numpy views of its columns live as long as the table (until the process exits),
    so closing the mapping earlier is refused with BufferError; the mapping then goes with the process."""

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            super().close()


def create_shared_table(capacity: int) -> tuple[EndpointTable, SharedMemory]:
    """An EndpointTable whose numeric columns live in a new shared-memory block (caller unlinks it), named
    `epp-table-<pid>-<random>` so that a leak can be traced to its process."""
    name = f"{TABLE_MEMORY_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    shm = _TableMemory(name=name, create=True, size=EndpointTable.buffer_size(capacity))
    table = EndpointTable(capacity, buffer=shm.buf)
    _shm_of[table] = shm
    return table, shm


def _tls_context(source: MetricsDataSourceParams) -> ssl.SSLContext | None:
    if source.scheme != "https":
        return None
    ctx = ssl.create_default_context()
    if source.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def scrape_url(source: MetricsDataSourceParams, endpoint: Endpoint) -> str:
    host = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
    return f"{source.scheme}://{host}:{endpoint.metrics_port or endpoint.port}{source.path}"


class ScrapePlane:
    """Owns the scraping of every endpoint in a table. Picks never wait on it: they read the columns."""

    def __init__(self) -> None:
        self.mode: Mode = "inline"
        self._table: EndpointTable | None = None
        self._source = MetricsDataSourceParams()
        self._extractor = CoreMetricsExtractorParams()
        self._worker: ScrapeWorker | None = None
        self._process: Any = None
        self._conn: Connection | None = None
        self._down: Connection | None = None
        self._send_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader_fd = -1
        self._stats: npt.NDArray[np.float64] = np.zeros(STATS_LEN, dtype=np.float64)
        self._stats_raw: Any = None

    # --- counters (exported to Prometheus) -------------------------------------------

    @property
    def scrapes_total(self) -> int:
        return int(self._stats[STAT_SCRAPES])

    @property
    def errors_total(self) -> int:
        """Failed scrapes over all endpoints; per endpoint see `table.scrape_errors`."""
        return int(self._stats[STAT_ERRORS])

    # --- lifecycle -----------------------------------------------------------------------------

    def start(
        self,
        table: EndpointTable,
        source_params: MetricsDataSourceParams,
        extractor_params: CoreMetricsExtractorParams,
        interval_s: float,
        timeout_s: float = 1.0,
        mode: Mode = "process",
    ) -> None:
        """Start scraping. 'inline' must be called from a running event loop; 'process' needs a table
        from `create_shared_table`. If called from a running loop, LoRA updates are applied on it."""
        if interval_s <= 0 or timeout_s <= 0:
            raise ValueError("scrape interval and timeout must be positive")
        self.mode = mode
        self._table = table
        self._source = source_params
        self._extractor = extractor_params
        if mode == "inline":
            self._worker = ScrapeWorker(
                table, interval_s, timeout_s, self._apply_lora, self._stats, _tls_context(source_params)
            )
            self._worker.start()
            self._loop = asyncio.get_running_loop()
        elif mode == "process":
            shm = _shm_of.get(table)
            if shm is None:
                raise ValueError("process mode needs a table made by create_shared_table()")
            ctx = mp.get_context("spawn")
            self._stats_raw = ctx.RawArray("d", STATS_LEN)
            self._stats = np.frombuffer(self._stats_raw, dtype=np.float64)
            # two one-way pipes: an event loop's add_reader may make its fd non-blocking, and the
            # sending side of each pipe must stay blocking so that no message is ever dropped
            down_r, down_w = ctx.Pipe(duplex=False)
            up_r, up_w = ctx.Pipe(duplex=False)
            self._conn = up_r
            self._down = down_w
            self._process = ctx.Process(
                target=_child_main,
                args=(down_r, up_w, shm.name, table.capacity, source_params, extractor_params, interval_s, timeout_s),
                kwargs={"stats": self._stats_raw},
                name="epp-scrape-plane",
                daemon=True,
            )
            self._process.start()
            down_r.close()
            up_w.close()
            with contextlib.suppress(RuntimeError):
                self.attach(asyncio.get_running_loop())
        else:
            raise ValueError(f"mode must be 'process' or 'inline', got {mode!r}")
        table.subscribe(self._on_change)
        for slot, endpoint in table.items():
            self._on_change("add", slot, endpoint)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Apply the child's LoRA updates on `loop` (process mode; start() does this when in a loop)."""
        if self._conn is None or self._reader_fd >= 0:
            return
        self._loop = loop
        self._reader_fd = self._conn.fileno()
        loop.add_reader(self._reader_fd, self.drain)

    def drain(self) -> int:
        """Apply every pending message from the scrape process; returns how many were applied."""
        conn = self._conn
        n = 0
        if conn is None:
            return 0
        try:
            while conn.poll():
                msg = conn.recv()
                if msg[0] == "lora":
                    _, slot, epoch, active, waiting, max_lora = msg
                    self._apply_lora(slot, epoch, frozenset(active), frozenset(waiting), max_lora)
                    n += 1
        except (EOFError, OSError):
            self._detach()
        return n

    def _apply_lora(
        self, slot: int, epoch: int, active: frozenset[str], waiting: frozenset[str], max_lora: float
    ) -> None:
        table = self._table
        if table is not None and table.present[slot] and table.epoch[slot] == epoch:
            table.set_lora(slot, active, waiting, max_lora)

    def _detach(self) -> None:
        if self._loop is not None and self._reader_fd >= 0:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._reader_fd)
        self._reader_fd = -1

    async def stop(self) -> None:
        table = self._table
        if table is not None:
            table.unsubscribe(self._on_change)
        if self._worker is not None:
            await self._worker.stop()
            self._worker = None
        if self._process is not None:
            self._detach()
            self._send(("stop",))
            await asyncio.get_running_loop().run_in_executor(None, self._process.join, 5.0)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(1.0)
            self._process = None
            for conn in (self._conn, self._down):
                if conn is not None:
                    conn.close()
            self._conn = self._down = None
        self._table = None

    def is_alive(self) -> bool:
        if self.mode == "process":
            return self._process is not None and bool(self._process.is_alive())
        return self._worker is not None

    # --- membership ----------------------------------------------------------------------------

    def _on_change(self, kind: str, slot: int, endpoint: Endpoint) -> None:
        if kind == "remove":
            self._dispatch(("del", slot))
            return
        engine = self._extractor.engine(endpoint.labels).name
        port = endpoint.metrics_port or endpoint.port
        assert self._table is not None
        self._dispatch(("set", slot, int(self._table.epoch[slot]), endpoint.address, port, engine))

    def _dispatch(self, msg: tuple[Any, ...]) -> None:
        if self._worker is not None:
            loop = self._loop
            if loop is not None and _in_thread_of(loop):
                _apply(self._worker, self._source, self._extractor, msg)
            elif loop is not None:
                loop.call_soon_threadsafe(_apply, self._worker, self._source, self._extractor, msg)
        else:
            self._send(msg)

    def _send(self, msg: tuple[Any, ...]) -> None:
        if self._down is None:
            return
        with self._send_lock, contextlib.suppress(OSError):  # child gone: is_alive() tells
            self._down.send(msg)


def _in_thread_of(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _apply(
    worker: ScrapeWorker, source: MetricsDataSourceParams, extractor: CoreMetricsExtractorParams, msg: tuple[Any, ...]
) -> None:
    if msg[0] == "set":
        _, slot, epoch, host, port, engine = msg
        cfg = extractor.engine_configs.get(engine) or extractor.engine_configs[extractor.default_engine]
        worker.set_target(slot, epoch, host, port, source.path, cfg)
    elif msg[0] == "del":
        worker.remove_target(msg[1])


# --- the scrape process ---------------------------------------------------------------------------


def _child_main(
    conn: Connection,
    up: Connection,
    shm_name: str,
    capacity: int,
    source: MetricsDataSourceParams,
    extractor: CoreMetricsExtractorParams,
    interval_s: float,
    timeout_s: float,
    stats: Any = None,
) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    with contextlib.suppress(OSError, AttributeError):
        os.nice(5)  # the serving process wins CPU contention
    # spawned children share the parent's resource tracker, so attaching here registers the name a
    # second time (a set: no-op) and the parent's unlink() is what releases it
    shm = SharedMemory(name=shm_name)
    assert shm.buf is not None
    asyncio.run(_child_async(conn, up, shm.buf, capacity, source, extractor, interval_s, timeout_s, stats))
    gc.collect()  # drop the last numpy views of the buffer so that it can be unmapped
    with contextlib.suppress(BufferError):
        shm.close()


async def _child_async(
    conn: Connection,
    up: Connection,
    buffer: memoryview,
    capacity: int,
    source: MetricsDataSourceParams,
    extractor: CoreMetricsExtractorParams,
    interval_s: float,
    timeout_s: float,
    stats_raw: Any,
) -> None:
    table = EndpointTable(capacity, buffer=buffer)
    stats = np.frombuffer(stats_raw, dtype=np.float64) if stats_raw is not None else None

    def lora_sink(slot: int, epoch: int, active: frozenset[str], waiting: frozenset[str], max_lora: float) -> None:
        with contextlib.suppress(OSError):
            up.send(("lora", slot, epoch, sorted(active), sorted(waiting), max_lora))

    worker = ScrapeWorker(table, interval_s, timeout_s, lora_sink, stats, _tls_context(source))
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def on_message() -> None:
        try:
            while conn.poll():
                msg = conn.recv()
                if msg[0] == "stop":
                    if not done.done():
                        done.set_result(None)
                    return
                _apply(worker, source, extractor, msg)
        except (EOFError, OSError):
            if not done.done():
                done.set_result(None)

    loop.add_reader(conn.fileno(), on_message)
    worker.start()
    try:
        await done
    finally:
        loop.remove_reader(conn.fileno())
        await worker.stop()
