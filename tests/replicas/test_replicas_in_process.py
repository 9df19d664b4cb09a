"""Two replicas in one process (each its own table, scheduler and director, the built-in default profile) sharing
through a real redis-server: prefix learning, in-flight load, a crashed peer, a store that dies and returns."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator

import orjson
import pytest

from epp.config.schema import default_config
from epp.datastore.table import Endpoint, EndpointTable
from epp.devstack.redis import RedisServer
from epp.director import Decision, Director
from epp.plugins.latency import PredictedTTFTProducer
from epp.plugins.latency_scorer import PredictedTTFTScorer
from epp.plugins.prefix import ApproxPrefixCacheProducer, block_hashes
from epp.plugins.prefix_index import as_keys
from epp.requests.openai import parse_openai_body
from epp.scheduling.framework import build_scheduler
from epp.shared.link import SharedState, Tuning
from epp.shared.metrics import RECORDS
from epp.shared.settings import parse_shared_state
from epp.shared.store import StoreConnection
from tests.replicas.sharing import linked, until

TUNING = Tuning(peer_ttl=1.0, heartbeat_interval=0.2, retry_interval=0.1)


class Replica:
    def __init__(self, name: str, url: str, servers: int) -> None:
        self.table = EndpointTable(16)
        for i in range(servers):
            self.table.add(Endpoint("127.0.0.1", 9000 + i, name=f"server-{i}"))
        scheduler = build_scheduler(default_config(), self.table)
        self.director = Director(self.table, scheduler, hooks=scheduler)
        self.prefix = next(p for p in scheduler.plugins.values() if isinstance(p, ApproxPrefixCacheProducer))
        self.scorer = next(p for p in scheduler.plugins.values() if isinstance(p, PredictedTTFTScorer))
        self.producer = next(p for p in scheduler.plugins.values() if isinstance(p, PredictedTTFTProducer))
        self.shared = SharedState(parse_shared_state(url), self.table, scheduler.plugins, "test/pool", name, TUNING)
        self.count = 0

    def decide(self, prompt: str) -> Decision:
        self.count += 1
        raw = orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 4})
        return self.director.decide(f"r{self.count}", {}, parse_openai_body(raw, "/v1/completions"), raw, None)

    def port(self, decision: Decision) -> int:
        return self.table.endpoint(decision.charged_slot).port

    def complete(self, decision: Decision) -> None:
        self.director.run_deferred_hooks(decision)
        self.director.complete(decision, None)


@pytest.fixture
async def replicas(store: RedisServer) -> AsyncIterator[tuple[Replica, Replica]]:
    a, b = Replica("a", store.url, 4), Replica("b", store.url, 4)
    async with linked(a.shared, b.shared):
        yield a, b


def learned(replica: Replica, prompt: str, port: int) -> bool:
    """Whether `replica`'s prefix index has all of `prompt`'s blocks at the server on `port`."""
    slot = replica.table.slot_of_hostport(f"127.0.0.1:{port}")
    assert slot is not None
    data = prompt.encode()
    keys = as_keys(block_hashes(data[: len(data) // 64 * 64], b"m", 64, 256))  # its full 64-byte blocks
    return bool(replica.prefix.index.holds(slot, keys).all())


async def test_a_prefix_routed_by_one_replica_is_routed_to_the_same_server_by_the_other(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    for tenant in range(3):
        system = f"You are the assistant of tenant {tenant}; answer briefly and precisely. " * 40
        first = a.decide(system + "First question?")
        a.complete(first)
        await until(functools.partial(learned, b, system, a.port(first)), timeout=1.0)
        second = b.decide(system + "Second question, asked through the other replica?")
        assert b.port(second) == a.port(first)
        b.director.complete(second, None)


async def test_in_flight_requests_held_through_one_replica_steer_the_others_picks(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    held = a.decide("x" * 8000)  # 2,000 prompt tokens queued at one server, not released
    busy = a.port(held)
    slot = b.table.slot_of_hostport(held.destination)
    assert slot is not None
    seconds = await until(lambda: b.table.inflight_requests[slot] == 1.0, timeout=1.0)
    assert seconds < 0.25
    for i in range(8):  # the other replica sends each new request elsewhere (without sharing: 1 in 4 would land)
        decision = b.decide(f"request {i} " + "y" * 400)
        assert b.port(decision) != busy
        b.director.complete(decision, None)
    a.director.complete(held, None)
    await until(lambda: b.table.inflight_requests[slot] == 0.0, timeout=1.0)


async def test_a_peers_requests_reach_this_replicas_prefix_demand_and_latency_fit_through_the_store(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    prior = list(b.producer.model.coefficients)
    for i in range(6):
        decision = a.decide(f"request {i} " + "w" * 600)
        a.director.first_chunk(decision, streamed=True)
        a.complete(decision)
    await until(lambda: b.producer.demand.requests == 6, timeout=1.0)
    await until(lambda: b.producer.model.coefficients != prior, timeout=1.0)
    assert a.producer.demand.requests == 6 and (b.producer.model.own == 1.0).all()


async def test_replicas_rank_themselves_alike_and_measure_how_late_the_others_changes_arrive(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    assert a.scorer.replica_place == a.shared.exchange.replica_place  # the scorer keeps them apart with these
    await until(lambda: a.shared.columns.peers == 1 and b.shared.columns.peers == 1, timeout=2.0)
    assert (a.shared.exchange.replica_place()[:2], b.shared.exchange.replica_place()[:2]) == ((0, 2), (1, 2))
    for i in range(10):
        a.complete(a.decide(f"request {i} " + "v" * 400))
        await asyncio.sleep(0.02)
    await until(lambda: b.shared.exchange.staleness > 0, timeout=2.0)
    assert b.shared.exchange.staleness < 0.25
    await a.shared.stop()  # a goodbye: B is alone, and nothing is kept apart
    await until(lambda: b.shared.exchange.replica_place()[:2] == (0, 1), timeout=2.0)


async def test_a_crashed_replica_leaves_the_others_view_within_its_ttl(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    held = [a.decide(f"held {i} " + "z" * 2000) for i in range(3)]
    slots = {b.table.slot_of_hostport(d.destination) for d in held}
    await until(lambda: sum(b.table.inflight_requests[s] for s in slots if s is not None) == 3.0, timeout=1.0)
    await a.shared.halt()  # no goodbye, as after SIGKILL
    seconds = await until(lambda: not b.table.inflight_requests.any(), timeout=5.0)
    assert seconds <= TUNING.peer_ttl + 0.5
    assert b.shared.columns.peers == 0


async def test_routing_goes_on_while_the_store_is_down_and_sharing_resumes_when_it_returns(
    replicas: tuple[Replica, Replica], store: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = replicas
    caplog.set_level(logging.INFO, "epp.shared")
    store.kill()
    await until(lambda: a.shared.connected is False and b.shared.connected is False, timeout=5.0)
    for i in range(20):  # every pick still succeeds, on local state
        a.complete(a.decide(f"while down {i} " + "w" * 500))
    store.start()
    await until(lambda: a.shared.connected is True and b.shared.connected is True, timeout=5.0)
    system = "A prompt first seen after the store came back. " * 40
    first = a.decide(system + "one")
    a.complete(first)
    await until(lambda: learned(b, system, a.port(first)), timeout=2.0)
    assert b.port(b.decide(system + "two")) == a.port(first)
    # one line each for the fault and for the return: a connection left open to the dead store is not reused
    lines = [record.getMessage() for record in caplog.records if record.name == "epp.shared"]
    assert sum("unreachable" in line for line in lines) == 2
    assert sum(" back: " in line for line in lines) == 2


async def test_a_replica_that_starts_later_replays_the_pools_recent_inserts(store: RedisServer) -> None:
    a = Replica("a", store.url, 4)
    await a.shared.start()
    try:
        await until(lambda: a.shared.connected is True)
        system = "A prefix learned before the second replica started. " * 40
        first = a.decide(system + "first")
        a.complete(first)
        await until(lambda: a.shared.publish_count > 0 and not a.shared.outboxes[0].records, timeout=2.0)
        await asyncio.sleep(0.05)
        late = Replica("late", store.url, 4)
        await late.shared.start()
        try:
            await until(lambda: learned(late, system, a.port(first)), timeout=2.0)
        finally:
            await late.shared.stop()
    finally:
        await a.shared.stop()


async def test_a_busy_replicas_sends_read_its_peers_records_and_each_record_is_applied_once(
    store: RedisServer,
) -> None:
    a, b = Replica("a", store.url, 4), Replica("b", store.url, 4)
    client = StoreConnection(parse_shared_state(store.url), 2.0)
    async with linked(b.shared):
        system = "You are the assistant of a tenant that only one replica has served so far. " * 40
        decision = b.decide(system + "A question?")
        b.complete(decision)
        for _ in range(200):  # until b's insert is in the stream
            [length] = await client.call(["XLEN", b.shared.inserts_key])
            if length:
                break
            await asyncio.sleep(0.01)
        received = RECORDS.value("inserts", "received")
        before = received.value
        positions = {a.shared.load_key: "0-0", a.shared.inserts_key: "0-0"}
        assert await a.shared.send(client, True, positions)  # a's full report, and in the same round trip the read
        assert learned(a, system, b.port(decision))
        assert a.shared.columns.peers == 1
        assert received.value == before + 1
        # what a blocked read issued before that send returns: already applied, not applied again
        [again] = await client.call(["XREAD", "STREAMS", *positions, "0-0", "0-0"])
        a.shared.receive(again, positions)
        assert received.value == before + 1
    await client.close()
