"""The predicted-TTFT model's per-endpoint slowness, shared between two replicas through a real redis-server: an
endpoint one replica learned slow is priced slow by the other before it has seen a response from it."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator

import pytest

from epp.datastore.table import Endpoint, EndpointTable
from epp.devstack.redis import RedisServer
from epp.plugins.fleet_model import PredictedTTFTParameters, ttft_features
from epp.plugins.latency import PredictedTTFTProducer
from epp.shared.link import SharedState, Tuning
from epp.shared.settings import parse_shared_state
from tests.replicas.sharing import linked, until

TUNING = Tuning(peer_ttl=1.0, heartbeat_interval=0.2, retry_interval=0.1)
PORTS = (9000, 9001, 9002, 9003)
SLOW = 9001
WORK = ttft_features(decoding=8, work=2000, waiting=1)


class Replica:
    def __init__(self, name: str, url: str, ports: tuple[int, ...]) -> None:
        self.table = EndpointTable(8)
        for port in ports:
            self.table.add(Endpoint("127.0.0.1", port, name=f"server-{port}"))
        self.producer = PredictedTTFTProducer("predicted-ttft", PredictedTTFTParameters(slowness_rate=0.2))
        self.producer.bind(self.table)
        plugins = {"predicted-ttft": self.producer}
        self.shared = SharedState(parse_shared_state(url), self.table, plugins, "test/model", name, TUNING)

    def slot(self, port: int) -> int:
        slot = self.table.slot_of_hostport(f"127.0.0.1:{port}")
        assert slot is not None
        return slot

    def predict(self, port: int) -> float:
        return self.producer.model.predict(self.slot(port), WORK)

    def observe(self, servers: dict[int, float], rounds: int, rng: random.Random) -> None:
        """`rounds` responses from each server (port → how many times slower than the model's prior it is)."""
        model = self.producer.model
        for i in range(rounds):
            for port, slowness in servers.items():
                x = ttft_features(rng.uniform(0, 32), rng.uniform(500, 4000), rng.uniform(0, 4))
                truth = slowness * sum(c * v for c, v in zip(model.prior, x, strict=True))
                model.learn(self.slot(port), x, truth * rng.uniform(0.95, 1.05), 1.0 + i * 0.01)


@pytest.fixture
async def replicas(store: RedisServer) -> AsyncIterator[tuple[Replica, Replica]]:
    a = Replica("a", store.url, PORTS)
    b = Replica("b", store.url, PORTS[::-1])  # other slots for the same servers: peers name them by ip:port
    async with linked(a.shared, b.shared):
        yield a, b


async def test_an_endpoint_one_replica_learned_slow_is_priced_slow_by_the_other(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    assert b.predict(SLOW) == pytest.approx(b.predict(9000))  # nothing learned anywhere yet
    rng = random.Random(3)
    a.observe({port: 4.0 if port == SLOW else 1.0 for port in PORTS}, 40, rng)
    learned = a.producer.model.slowness[a.slot(SLOW)] / a.producer.model.slowness[a.slot(9000)]
    assert learned > 3.0
    await until(lambda: b.predict(SLOW) > 3.0 * b.predict(9000), timeout=2.0)
    seen = b.producer.model.slowness[b.slot(SLOW)] / b.producer.model.slowness[b.slot(9000)]
    assert seen == pytest.approx(learned, rel=0.02)
    assert (b.producer.model.own == 1.0).all()  # B saw no response: this is A's estimate


async def test_two_replicas_estimates_are_merged_by_precision_and_a_stopped_peers_leaves(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    rng = random.Random(5)
    a.observe({9000: 1.0, SLOW: 4.0}, 60, rng)  # many responses: a precise estimate
    b.observe({9000: 1.0, SLOW: 1.0}, 8, rng)  # fewer, and the server looked fast: a looser one
    model_a, model_b = a.producer.model, b.producer.model
    slot_a, slot_b = a.slot(SLOW), b.slot(SLOW)
    precisions = (1 / model_a.own_variance[slot_a], 1 / model_b.own_variance[slot_b])
    assert precisions[0] > precisions[1]
    logs = (math.log(model_a.own[slot_a]), math.log(model_b.own[slot_b]))
    merged = math.exp((precisions[0] * logs[0] + precisions[1] * logs[1]) / sum(precisions))
    await until(lambda: model_b.slowness[slot_b] == pytest.approx(merged, rel=1e-6), timeout=2.0)
    await until(lambda: model_a.slowness[slot_a] == pytest.approx(merged, rel=1e-6), timeout=2.0)
    assert model_b.own[slot_b] < merged < model_a.own[slot_a]  # each learned only its own responses
    await a.shared.stop()  # a goodbye: its estimate leaves B's view at once
    await until(lambda: model_b.slowness[slot_b] == pytest.approx(model_b.own[slot_b], rel=1e-6), timeout=2.0)
