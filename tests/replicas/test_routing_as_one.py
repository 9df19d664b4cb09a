"""Two replicas of the built-in default profile exchanging epp.shared's records by hand (the very records the link
carries through Redis, delivered at chosen moments of a virtual clock): what makes them route as one."""

from __future__ import annotations

import orjson
import pytest

from epp.config.schema import default_config
from epp.datastore.table import Endpoint, EndpointTable
from epp.director import Decision, Director
from epp.plugins.latency import PredictedTTFTProducer
from epp.plugins.latency_scorer import PredictedTTFTScorer
from epp.requests.openai import parse_openai_body
from epp.scheduling.framework import build_scheduler
from epp.shared.codec import RecordError
from epp.shared.exchange import Exchange
from epp.shared.observations import OBSERVATIONS, decode_observations

SERVERS = 4


class Replica:
    def __init__(self, name: str, clock: list[float], servers: int = SERVERS) -> None:
        self.table = EndpointTable(8)
        for i in range(servers):
            self.table.add(Endpoint(f"10.0.0.{i + 1}", 8000, name=f"server-{i}"))
        scheduler = build_scheduler(default_config(), self.table)
        self.director = Director(self.table, scheduler, hooks=scheduler)
        self.director.clock = lambda: clock[0]
        self.producer = next(p for p in scheduler.plugins.values() if isinstance(p, PredictedTTFTProducer))
        self.producer.clock = lambda: clock[0]
        self.scorer = next(p for p in scheduler.plugins.values() if isinstance(p, PredictedTTFTScorer))
        self.exchange = Exchange(self.table, scheduler.plugins, name, 1024)
        self.clock = clock
        self.count = 0

    def decide(self, prompt: str) -> Decision:
        self.count += 1
        raw = orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 8})
        parsed = parse_openai_body(raw, "/v1/completions")
        return self.director.decide(f"{self.exchange.replica}-{self.count}", {}, parsed, raw, None)

    def send_to(self, peer: Replica, late: float = 0.0) -> None:
        """Everything this replica changed since it last sent, applied at the peer `late` seconds after it was
        made (the clock stands still: the staleness is what the peer measures)."""
        for stream, fields in self.exchange.outgoing(False, self.clock[0] - late):
            if stream == "load":
                peer.exchange.apply_load(fields, self.clock[0], self.clock[0])
            else:
                peer.exchange.apply_inserts([fields], self.clock[0])


def pair(servers: int = SERVERS) -> tuple[Replica, Replica, list[float]]:
    clock = [100.0]
    return Replica("replica-a", clock, servers), Replica("replica-b", clock, servers), clock


def test_a_peers_request_reaching_its_first_token_leaves_the_queued_prefill_this_replica_counted_as_computed() -> None:
    a, b, clock = pair(servers=1)
    first = a.decide("a long unique prompt " * 300)
    slot = first.charged_slot
    a.send_to(b)
    queued = b.producer.queued_tokens[slot]
    assert queued > 500 and b.producer.queued_requests[slot] == 1.0
    clock[0] += 5.0  # long enough for B to count most of the head's prefill as computed
    own = b.decide("a short prompt of B's " * 10)  # B prices the endpoint (and sends a short request there)
    b.director.first_chunk(own, streamed=True)
    assert b.producer.queued_tokens[slot] == queued
    assert b.producer.drain.drained[slot] > 0.2 * queued
    # A's request reaches its first token and another of A's, as long, is queued there: one report carries both,
    # and the queue's length is what it was
    a.director.first_chunk(first, streamed=True)
    a.director.complete(first, None)
    a.decide("another long prompt! " * 300)
    a.send_to(b)
    assert b.producer.queued_tokens[slot] == queued
    # what B counted as computed was the finished head's: it leaves with it, the new head starts from nothing
    assert b.producer.drain.drained[slot] == 0.0


def test_replicas_that_see_the_same_pool_take_close_candidates_from_their_own_parts_of_it() -> None:
    a, b, clock = pair()
    # a steady stream through both replicas, each seeing the other's picks 20 ms late
    for i in range(60):
        clock[0] += 0.01
        router = (a, b)[i % 2]
        decision = router.decide(f"warm-up {i} " * 40)
        a.send_to(b, late=0.02)
        b.send_to(a, late=0.02)
        router.director.complete(decision, None)
    assert a.exchange.replica_place()[:2] == (0, 2) and b.exchange.replica_place()[:2] == (1, 2)
    assert 0.015 < b.exchange.staleness < 0.025
    picks = []
    for i in range(8):  # both replicas pick at once on the same view of an idle pool, again and again
        clock[0] += 0.01
        together = [router.decide(f"same moment {i} " * 200) for router in (a, b)]
        picks.append(tuple(d.charged_slot for d in together))
        for router, decision in zip((a, b), together, strict=True):
            router.director.complete(decision, None)
        a.send_to(b, late=0.02)
        b.send_to(a, late=0.02)
    assert all(slot_a != slot_b for slot_a, slot_b in picks), picks


def test_the_kv_a_peer_charged_counts_in_this_replicas_overflow_price_until_its_request_ends() -> None:
    a, b, _ = pair()
    decision = a.decide("a prompt that will hold KV for a while " * 100)
    slot = decision.charged_slot
    a.send_to(b)
    assert b.producer.kv_tokens[slot] == a.producer.kv_tokens[slot] > 500
    a.director.first_chunk(decision, streamed=True)
    a.director.complete(decision, None)
    a.send_to(b)
    assert b.producer.kv_tokens[slot] == 0.0


def test_the_peers_requests_count_in_this_replicas_prefix_demand_so_both_call_the_same_prefix_common() -> None:
    a, b, _ = pair()
    system = "You are a careful assistant who answers in full sentences. " * 8  # 480 bytes: past 4 blocks
    for i in range(24):  # every request through A: one system prompt, each user's own question after it
        decision = a.decide(system + f"user {i} asks about topic {i * 7} " * 6)
        a.director.complete(decision, None)
    a.send_to(b)
    assert b.producer.demand.requests == a.producer.demand.requests == 24
    assert b.producer.demand.total == a.producer.demand.total
    for key, counted in a.producer.demand.counts.items():  # B counted each prefix as often, at the same moments
        assert b.producer.demand.counts[key] == counted
    # the system prompt's checkpoints carry all of the traffic: B, which served none of it, sees that share too
    shared = [key for key in a.producer.demand.counts if a.producer.demand.share(key) > 0.99]
    assert shared and all(b.producer.demand.share(key) > 0.99 for key in shared)
    own = [key for key in a.producer.demand.counts if a.producer.demand.share(key) < 0.1]  # each user's question
    assert own and all(b.producer.demand.share(key) < 0.1 for key in own)


def test_a_replicas_own_inserts_and_a_second_prefix_producers_do_not_count_twice() -> None:
    a, b, _ = pair()
    decision = a.decide("a prompt long enough to reach the first checkpoint of the demand counter " * 4)
    a.director.complete(decision, None)
    entries = a.exchange.outgoing(False, None)
    inserts = [fields for stream, fields in entries if stream == "inserts"]
    assert len(inserts) == 1
    a.exchange.apply_inserts(inserts, None)  # its own record comes back from the stream: skipped
    assert a.producer.demand.requests == 1
    b.exchange.apply_inserts(inserts, None)
    assert b.producer.demand.requests == 1
    other = dict(inserts[0])
    other[b"p"] = b"another-prefix-producer"  # a plugin B lacks, or not the one its demand counts
    b.exchange.apply_inserts([other], None)
    assert b.producer.demand.requests == 1


def test_a_peers_latency_observations_teach_this_replicas_coefficients_but_not_its_slowness() -> None:
    a, b, clock = pair()
    before = list(b.producer.model.coefficients)
    slowness = b.producer.model.own.copy()
    for i in range(12):  # A's requests take far longer to reach their first token than the prior says
        decision = a.decide(f"a slow request {i} " * 100)
        clock[0] += 2.0
        a.director.first_chunk(decision, streamed=True)
        a.director.complete(decision, None)
    learned = list(a.producer.model.coefficients)
    assert learned != before
    a.send_to(b)
    # B fitted the same observations from the same prior: its coefficients moved as A's did (not to the bit: the fit's
    # drift counts the time since its last update, and B applied them all at once)
    fitted = b.producer.model.coefficients
    moved = [i for i, (old, new) in enumerate(zip(before, learned, strict=True)) if new != old]
    assert moved and all((fitted[i] - before[i]) * (learned[i] - before[i]) > 0 for i in moved)
    x = (1.0, 0.0, 0.25, 0.1)[: len(learned)]
    assert b.producer.model.fleet_prediction(x) == pytest.approx(a.producer.model.fleet_prediction(x), rel=0.1)
    assert (b.producer.model.own == slowness).all()  # its own slowness estimates learn from its own responses only
    assert b.producer.model.observations.sum() == a.producer.model.observations.sum() == 12


def test_observation_records_round_trip_and_a_model_of_other_features_ignores_them() -> None:
    a, b, clock = pair()
    decision = a.decide("one observed request " * 50)
    clock[0] += 0.5
    a.director.first_chunk(decision, streamed=True)
    entries = [fields for stream, fields in a.exchange.outgoing(False, None) if fields.get(b"k") == OBSERVATIONS]
    assert len(entries) == 1
    batch = decode_observations(entries[0])
    width = a.producer.model.features_count + 1
    assert batch.rows.shape == (1, width) and batch.rows[0, -1] == 0.5
    assert batch.hostports == [a.table.hostports[decision.charged_slot]]
    narrower = dict(entries[0])
    narrower[b"w"] = str(width - 1).encode()  # a replica of another version, whose model has other features
    narrower[b"x"] = batch.rows[:, 1:].tobytes()
    before = list(b.producer.model.coefficients)
    b.exchange.apply_inserts([narrower], None)
    assert b.producer.model.coefficients == before
    truncated = dict(entries[0])
    truncated[b"x"] = truncated[b"x"][:-8]
    with pytest.raises(RecordError):
        decode_observations(truncated)
