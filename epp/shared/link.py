"""The replica's connection to Redis/Valkey: two background tasks beside the request path, one connection each.

Event-driven, so that a change reaches the peers as soon as it is made and an idle replica costs nothing:
- the publisher sleeps until something changes (the director charges or releases in-flight load, a plugin's
  insert lands in its outbox, or the heartbeat is due) and then sends, in one pipeline, what changed of this
  replica's own shared columns (everything every `heartbeat_interval`: the heartbeat) and the waiting inserts,
  followed by an XREAD (not blocking) of what the peers wrote since. Sends are at least `interval` apart:
  changes made meanwhile go out together, which bounds the round trips a second under load;
- the reader, while the publisher is quiet, blocks in XREAD on both streams, so a peer's record arrives when
  it is written; while the publisher sends, its round trips do the reading and the reader waits (a blocked
  read would also wake on each of this replica's own writes: one round trip per send under load, not two).
A record is thus at most about two `interval`s plus a round trip old when applied (plus the processes' wait
for a CPU). Streams, so that a starting replica replays the pool's recent inserts and warms its prefix index.

Faults: when either connection fails the replica goes on with local state (a log line, `connected 0`), inserts
made meanwhile are dropped (counted), peers drop out after `peer_ttl`, and the next attempt that succeeds
(every `retry_interval`) rejoins with a full report. Nothing here is awaited by a request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from epp import tasks
from epp.datastore.table import EndpointTable
from epp.shared.codec import BYE, encode_load
from epp.shared.exchange import Exchange
from epp.shared.metrics import CONNECTED, DROPPED, PEERS, RECORDS
from epp.shared.settings import SharedStateSettings
from epp.shared.store import Command, StoreConnection, StoreError
from epp.shared.streams import entries_after, id_order, stream_entries, xadd, xread

log = logging.getLogger("epp.shared")


@dataclass(frozen=True)
class Tuning:
    #: least time between two publications (changes made meanwhile go out together; 5 ms cost more CPU)
    interval: float = 0.01
    heartbeat_interval: float = 1.0
    #: a peer not heard from this long is dropped (a SIGKILLed replica's load leaves within it)
    peer_ttl: float = 3.0
    retry_interval: float = 0.5
    #: a blocked read without news returns after this long and is sent again
    read_block: float = 1.0
    #: inserts waiting to be sent, per plugin
    outbox_capacity: int = 8192
    #: insert batches kept in the stream and replayed by a starting replica
    inserts_kept: int = 4096
    load_kept: int = 1024
    socket_timeout: float = 2.0


def replica_name() -> str:
    """Pod name (or host name) plus a random suffix: unique even for a restarted pod."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}-{secrets.token_hex(3)}"


class SharedState:
    def __init__(
        self,
        settings: SharedStateSettings,
        table: EndpointTable,
        plugins: Mapping[str, Any],
        scope: str,
        replica: str | None = None,
        tuning: Tuning | None = None,
    ) -> None:
        self.settings = settings
        self.table = table
        self.tuning = tuning or Tuning()
        self.replica = replica or replica_name()
        self.load_key = f"epp:{scope}:load"
        self.inserts_key = f"epp:{scope}:inserts"
        self.exchange = Exchange(table, plugins, self.replica, self.tuning.outbox_capacity, self.changed)
        self.columns = self.exchange.columns
        self.learners = self.exchange.learners
        self.outboxes = self.exchange.outboxes
        #: None until the first command answers or fails
        self.connected: bool | None = None
        self._next_full = 0.0
        #: set when something is waiting to be published
        self._wake = asyncio.Event()
        #: wall time of the oldest change not yet published (0: none)
        self._changed_at = 0.0
        self._heartbeat: asyncio.TimerHandle | None = None
        #: when the publisher's last round trip ended (monotonic)
        self._sent_at = 0.0
        #: pipelines sent
        self.publish_count = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._writer: StoreConnection | None = None
        self._reader: StoreConnection | None = None
        CONNECTED.value().set(0.0)

    async def start(self) -> None:
        """Start the background task; returns at once (an unreachable store is a fault, not a startup error)."""
        timeout = self.tuning.socket_timeout
        self._writer = StoreConnection(self.settings, timeout, f"epp-{self.replica}")
        self._reader = StoreConnection(self.settings, timeout, f"epp-{self.replica}-reader")
        self.table.load_listener = self.changed
        self._tasks = [tasks.spawn(self._run(self._writer, self._reader), "shared-state")]
        shares = f"{len(self.columns.names)} columns and {len(self.learners)} prefix indexes"
        log.info("shared state %s: replica %s shares %s", self.settings.url, self.replica, shares)

    async def stop(self) -> None:
        await self.halt()
        writer = self._writer
        if writer is not None and self.connected:
            try:  # peers take this replica's load out now rather than after peer_ttl
                bye = encode_load(self.replica, time.time(), BYE, [], [], np.zeros((0, 0)))
                await writer.call(xadd(self.load_key, bye, self.tuning.load_kept), timeout=0.5)
            except StoreError:
                pass
        for client in (self._writer, self._reader):
            if client is not None:
                await client.close()
        self.columns.forget_all()
        PEERS.value().set(0.0)

    async def halt(self) -> None:
        """Stop the background tasks (without a goodbye: what a crash looks like to the peers). A task cancelled
        inside a blocking read may take a moment to unwind; it is not waited for beyond a second."""
        if self.table.load_listener == self.changed:
            self.table.load_listener = None
        for outbox in self.outboxes:
            outbox.on_append = None
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        self._tasks = []

    def changed(self) -> None:
        """Something to publish (called on the request path: only sets a flag and wakes the publisher)."""
        if not self._changed_at:
            self._changed_at = time.time()
        if not self._wake.is_set():
            self._wake.set()

    # --- connection state -------------------------------------------------------------------------

    def _up(self) -> None:
        if self.connected is not True:
            again = self.connected is False
            log.info("shared state %s %s: routing with %s", self.settings.url, "back" if again else "reached", "peers")
        self.connected = True
        CONNECTED.value().set(1.0)

    def _down(self, error: BaseException) -> None:
        if self.connected is not False:
            log.warning(
                "shared state %s unreachable (%s: %s): routing on this replica's own state; retrying every %gs",
                self.settings.url,
                type(error).__name__,
                error,
                self.tuning.retry_interval,
            )
        self.connected = False
        CONNECTED.value().set(0.0)
        self._next_full = 0.0  # the first report after the fault is a full one

    # --- the tasks ------------------------------------------------------------------------------

    async def _run(self, writer: StoreConnection, reader: StoreConnection) -> None:
        positions: dict[str, str] = {}
        while True:
            try:
                if not positions:
                    positions = await self._catch_up(reader)
                elif self.connected is False:
                    await self._check_positions(reader, positions)
                    self._up()
                await _first_failure(
                    tasks.spawn(_failure_of(self._publish(writer, positions)), "shared-state-publish"),
                    tasks.spawn(_failure_of(self._read(reader, positions)), "shared-state-read"),
                )
            except StoreError as failed:
                for client in (writer, reader):  # one the failure did not touch may be open to a store now gone
                    client.disconnect()
                self._down(failed)
                await self._ride_out()

    async def _ride_out(self) -> None:
        """Local upkeep while the store is away, until the next attempt."""
        retry_at = time.monotonic() + self.tuning.retry_interval
        while True:
            self._wake.clear()
            self._upkeep(time.monotonic())
            self._drop_waiting("disconnected")
            left = retry_at - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, self.tuning.peer_ttl / 4))

    def _upkeep(self, now: float) -> None:
        self.columns.settle()
        for peer in self.columns.expire(now, self.tuning.peer_ttl):
            log.info("replica %s left the shared view (silent for %gs)", peer, self.tuning.peer_ttl)
        PEERS.value().set(float(self.columns.peers))

    async def _publish(self, client: StoreConnection, positions: dict[str, str]) -> None:
        """Sleep until something changed or the heartbeat is due; send it, at most once per `interval`, and read
        the peers' records in the same round trip."""
        loop = asyncio.get_running_loop()
        interval = self.tuning.interval
        self._wake.set()  # a full report first
        sent = -interval
        while True:
            await self._wake.wait()
            # a burst of requests in this turn of the event loop goes out as one pipeline
            await asyncio.sleep(max(sent + interval - time.monotonic(), 0.0))
            self._wake.clear()
            sent = time.monotonic()
            full = sent >= self._next_full
            if full:
                self._upkeep(sent)  # peers are expired on the heartbeat's clock
            if await self.send(client, full, positions):
                self._sent_at = time.monotonic()
            if full:
                self._next_full = sent + self.tuning.heartbeat_interval
                if self._heartbeat is not None:
                    self._heartbeat.cancel()
                self._heartbeat = loop.call_at(self._next_full, self._wake.set)

    async def send(self, client: StoreConnection, full: bool, positions: dict[str, str]) -> bool:
        """One pipeline: this replica's changed (or, with `full`, all) shared numbers and its waiting inserts, then
        an XREAD (not blocking) of what peers wrote since the last read. False: there was nothing to send."""
        changed_at, self._changed_at = self._changed_at, 0.0
        entries = self.exchange.outgoing(full, changed_at or None)
        if not entries:
            return False
        commands: list[Command] = [
            xadd(self.load_key, fields, self.tuning.load_kept)
            if stream == "load"
            else xadd(self.inserts_key, fields, self.tuning.inserts_kept)
            for stream, fields in entries
        ]
        commands.append(xread(positions))
        try:
            replies = await client.call(*commands)
        except StoreError:
            lost = sum(len(fields[b"n"]) // 4 for stream, fields in entries if stream == "inserts")
            if lost:
                DROPPED.value("disconnected").inc(lost)
            raise
        self.publish_count += 1
        for stream, _ in entries:
            RECORDS.value(stream, "sent").inc()
        self.receive(replies[-1], positions)
        return True

    async def _read(self, client: StoreConnection, positions: dict[str, str]) -> None:
        """While the publisher is quiet, block in XREAD until a peer writes to either stream and apply what it
        returns; while it sends (under load), its round trips read the peers' records and this waits."""
        block = self.tuning.read_block
        timeout = block + self.tuning.socket_timeout
        quiet_after = 2 * self.tuning.interval
        while True:
            busy = self._sent_at + quiet_after - time.monotonic()
            if busy > 0:
                await asyncio.sleep(busy)
                continue
            [reply] = await client.call(xread(positions, block), timeout=timeout)
            self.columns.settle()
            self.receive(reply, positions)

    def _drop_waiting(self, reason: str) -> None:
        for outbox in self.outboxes:
            lost = len(outbox.drain())
            if lost:
                DROPPED.value(reason).inc(lost)

    async def _catch_up(self, client: StoreConnection) -> dict[str, str]:
        """Replay the pool's recent inserts (a starting replica's index is warm at once) and return where each
        stream ends."""
        inserts, load = await client.call(
            ["XREVRANGE", self.inserts_key, "+", "-", "COUNT", self.tuning.inserts_kept],
            ["XREVRANGE", self.load_key, "+", "-", "COUNT", 1],
        )
        replay, last_load = stream_entries(inserts), stream_entries(load)
        self._up()
        replay.reverse()
        for first in range(0, len(replay), 32):  # requests arriving meanwhile are served between chunks
            self.exchange.apply_inserts([fields for _, fields in replay[first : first + 32]], wall=None)
            await asyncio.sleep(0)
        if replay:
            log.info("replayed %d insert batches from the shared state", len(replay))
        return {
            self.load_key: last_load[0][0] if last_load else "0-0",
            self.inserts_key: replay[0][0] if replay else "0-0",
        }

    async def _check_positions(self, client: StoreConnection, positions: dict[str, str]) -> None:
        """After a fault: a store that restarted empty numbers its entries from scratch; read from its start."""
        for key in list(positions):
            [reply] = await client.call(["XREVRANGE", key, "+", "-", "COUNT", 1])
            last = stream_entries(reply)
            if not last or id_order(last[0][0]) < id_order(positions[key]):
                positions[key] = "0-0"

    def receive(self, response: Any, positions: dict[str, str]) -> None:
        """Apply an XREAD response and move the read positions past it."""
        wall = time.time()
        now = time.monotonic()
        for stream, raw in response or ():  # RESP2: [[key, [[id, [field, value, ...]], ...]], ...]
            key = stream.decode() if isinstance(stream, bytes) else str(stream)
            records = entries_after(raw, positions[key])  # the publisher's and the reader's reads may overlap
            if records:
                positions[key] = records[-1][0]
            if key == self.load_key:
                for _, fields in records:
                    self.exchange.apply_load(fields, wall, now)
            else:
                self.exchange.apply_inserts([fields for _, fields in records], wall)


async def _failure_of(work: Coroutine[Any, Any, None]) -> StoreError:
    """Run `work` until the store fails it; that failure is returned, not raised (it is no task's failure)."""
    try:
        await work
    except StoreError as exc:
        return exc
    raise AssertionError("the shared-state tasks run until the store fails them")


async def _first_failure(*running: asyncio.Task[StoreError]) -> None:
    """Wait until one of the tasks ends, cancel the others and raise its store failure."""
    try:
        done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in running:
            task.cancel()
        await asyncio.wait(running)
    raise next(iter(done)).result()
