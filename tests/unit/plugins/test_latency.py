"""predicted-ttft-producer / -scorer: queued prefill, prefix savings, online learning per endpoint."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from epp.config.schema import ConfigError, load_config_text
from epp.datastore.table import EndpointTable
from epp.director import Director
from epp.observability.extension import EXTENSION
from epp.plugins.fleet_model import FleetModel, PredictedTTFTParameters, ttft_features, ttft_model
from epp.plugins.latency import KEY, PredictedTTFTProducer
from epp.plugins.latency_scorer import PredictedTTFTScorer
from epp.plugins.prediction import Prediction
from epp.plugins.prefill_drain import QueuedPrefillDrain
from epp.plugins.step_phase import STEP_WINDOW, EngineStepPhase
from epp.requests.openai import parse_openai_body
from epp.scheduling.framework import build_scheduler
from epp.scheduling.types import Usage
from tests.support.plugins import make, pool, slots, state

CONFIG = """
plugins:
- type: approx-prefix-cache-producer
- type: predicted-ttft-producer
- type: predicted-ttft-scorer
  parameters: {prefixAffinity: 0}  # the prediction alone (affinity has its own test)
schedulingProfiles:
- name: default
  plugins: [{pluginRef: predicted-ttft-scorer}]
"""


def _setup(count: int) -> tuple[Director, PredictedTTFTProducer]:
    table = pool(count)
    scheduler = build_scheduler(load_config_text(CONFIG, "t"), table)
    producer = scheduler.plugins["predicted-ttft-producer"]
    assert isinstance(producer, PredictedTTFTProducer)
    return Director(table, scheduler, hooks=scheduler), producer


def _decide(director: Director, prompt: str, rid: str = "r") -> object:
    raw = orjson.dumps({"model": "m", "prompt": prompt})
    return director.decide(rid, {}, parse_openai_body(raw, "/v1/completions"), raw, None)


def test_queued_prefill_is_charged_at_the_pick_and_released_at_the_first_chunk() -> None:
    director, producer = _setup(2)
    first = _decide(director, "a" * 4000)  # 1,000 prompt tokens, nothing cached
    slot = first.charged_slot  # type: ignore[attr-defined]
    assert producer.queued_tokens[slot] == pytest.approx(1000)
    second = _decide(director, "b" * 4000, "r2")
    assert second.charged_slot != slot  # type: ignore[attr-defined]  # the other one has no queue
    director.first_chunk(first, streamed=True)  # type: ignore[arg-type]
    assert producer.queued_tokens[slot] == 0
    director.complete(first, None)  # type: ignore[arg-type]
    director.complete(second, None)  # type: ignore[arg-type]  # released at the end without a first chunk
    assert not producer.queued_tokens.any() and not producer.queued_requests.any()


def test_a_warm_endpoint_wins_until_its_queue_costs_more_than_the_prefix_saves() -> None:
    director, producer = _setup(2)
    clock = [100.0]
    producer.clock = lambda: clock[0]
    system = "s" * 16_000  # 4,000 tokens shared
    warm = _decide(director, system + "q0" * 100)
    director.first_chunk(warm, streamed=True)  # type: ignore[arg-type]
    director.run_deferred_hooks(warm)  # type: ignore[arg-type]  # the prefix index learns the prompt
    director.complete(warm, None)  # type: ignore[arg-type]
    clock[0] += 1.0  # its engine step ended long ago
    slot = warm.charged_slot  # type: ignore[attr-defined]
    picks = [_decide(director, system + f"q{i}" * 100, f"r{i}") for i in range(1, 4)]
    # each follow-up saves ~4,000 prefill tokens on the warm endpoint and queues ~100 there: it keeps them
    assert [p.charged_slot for p in picks] == [slot] * 3  # type: ignore[attr-defined]
    producer.queued_tokens[slot] += 20_000  # its queue now costs more than twice what the prefix saves
    colder = _decide(director, system + "q9" * 100, "r9")
    assert colder.charged_slot != slot  # type: ignore[attr-defined]


def _observe(model: FleetModel, slot: int, slowness: float, rng: random.Random, now: float) -> float:
    """One response from an engine `slowness` times slower than a reference one; returns the relative error
    of the prediction made after learning from it."""
    work = rng.uniform(200, 8000)
    decoding = rng.uniform(0, 64)
    waiting = rng.uniform(0, 8)
    truth = slowness * (0.02 + 0.01 * decoding / 100 + work / 15_000 + 0.03 * waiting / 10)
    observed = truth * rng.uniform(0.95, 1.05)
    x = ttft_features(decoding, work, waiting)
    model.learn(slot, x, observed, now)
    return abs(model.predict(slot, x) - truth) / truth


def test_the_model_learns_the_pool_and_each_endpoints_slowness_and_follows_a_slowdown() -> None:
    model = ttft_model(4, PredictedTTFTParameters(slowness_rate=0.2))
    rng = random.Random(7)
    now = 1.0
    for _ in range(100):
        now += 0.1
        _observe(model, 0, 1.0, rng, now)
        _observe(model, 1, 4.0, rng, now)  # a GPU four times slower
    assert model.slowness[1] / model.slowness[0] == pytest.approx(4.0, rel=0.15)
    errors = []
    for _ in range(40):  # endpoint 0 becomes three times slower
        now += 0.1
        errors.append(_observe(model, 0, 3.0, rng, now))
    assert errors[0] > 0.3  # it really had to move
    assert np.median(errors[-10:]) < 0.1, errors


def test_a_new_endpoint_starts_from_the_fleets_median_slowness() -> None:
    model = ttft_model(4, PredictedTTFTParameters(slowness_rate=0.2))
    rng = random.Random(3)
    for i in range(60):
        _observe(model, 0, 2.0, rng, 1.0 + i)
        _observe(model, 1, 2.0, rng, 1.0 + i)
    model.reset(2)
    assert model.slowness[2] == pytest.approx(float(np.median(model.slowness[:2])))


def test_streamed_responses_teach_the_model_and_count_in_the_error_metric() -> None:
    director, producer = _setup(1)
    EXTENSION.reset()
    clock = [100.0]
    producer.clock = lambda: clock[0]
    before = producer.model.predict(0, ttft_features(0, 1000, 0))
    decisions = []
    for i in range(20):
        decision = _decide(director, f"{i:04d}" * 1000, f"r{i}")  # 1,000 tokens
        decision.picked_at -= 0.5  # type: ignore[attr-defined]  # half a second to the first token: slow
        director.first_chunk(decision, streamed=True)  # type: ignore[arg-type]
        clock[0] += 0.5
        decisions.append(decision)
    # learned at the first chunk: the usage (the end of each response) comes an output length later
    assert producer.model.predict(0, ttft_features(0, 1000, 0)) > 3 * before
    counts = EXTENSION._ttft_error.counts
    assert sum(counts) == 20
    learned = producer.model.coefficients.copy()
    for decision in decisions:
        director.complete(decision, Usage(prompt_tokens=1000, completion_tokens=5, cached_reported=True))  # type: ignore[arg-type]
    assert producer.model.coefficients == learned and sum(EXTENSION._ttft_error.counts) == 20


def test_parameters_are_checked() -> None:
    declared = "- type: predicted-ttft-producer"
    bad = CONFIG.replace(declared, declared + "\n  parameters: {driftPerSecond: 0}")
    with pytest.raises(ConfigError, match="driftPerSecond"):
        load_config_text(bad, "t")


def test_prefix_affinity_counts_under_pressure_and_only_for_what_sets_a_candidate_apart() -> None:
    table = pool(3)
    cycle = state(table)
    candidates = slots(0, 1, 2)

    def predict(seconds: list[float], queueing: list[float], held: list[float], common: float = 0.0) -> None:
        zeros = np.zeros(3)
        arrays = np.array(seconds), np.array(held), np.array(queueing)
        prediction = Prediction(
            candidates, arrays[0], zeros, zeros, zeros, arrays[1], zeros, arrays[2], 0.0, zeros, common, None, None
        )
        cycle.write(KEY, prediction)

    scorer = make(PredictedTTFTScorer, {"prefixAffinity": 2})
    # idle pool (nothing queued): the prediction alone decides, the warm endpoint 0 loses
    predict([1.5, 1.0, 1.2], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0])
    assert scorer.score(cycle, candidates).argmax() == 1
    # all queueing (pressure 1): endpoint 0 counts 1 + 2 x 1 = 3 times less and wins while under 3x slower
    predict([2.5, 1.0, 1.2], [2.5, 1.0, 1.2], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(scorer.score(cycle, candidates), [1.0, 2.5 / 3, 2.5 / 3 / 1.2])
    predict([3.5, 1.0, 1.2], [3.5, 1.0, 1.2], [1.0, 0.0, 0.0])
    assert scorer.score(cycle, candidates).argmax() == 1
    # a common prefix (held by most candidates, or by fewer than its traffic needs) sets none apart
    predict([2.5, 1.0, 1.2], [2.5, 1.0, 1.2], [1.0, 0.0, 0.0], common=1.0)
    assert scorer.score(cycle, candidates).argmax() == 1
    predict([2.5, 1.0, 1.2], [2.5, 1.0, 1.2], [1.0, 0.0, 0.0], common=0.5)  # beyond the common part it does
    np.testing.assert_allclose(scorer.score(cycle, candidates), [1.0 / (2.5 / 2), 1.0, 1.0 / 1.2])  # 1 + 2 x 0.5


def test_decode_weight_adds_the_predicted_decode_time() -> None:
    config = CONFIG.replace("{prefixAffinity: 0}", "{prefixAffinity: 0, decodeWeight: 1}")
    table = pool(2)
    scheduler = build_scheduler(load_config_text(config, "t"), table)
    producer = scheduler.plugins["predicted-ttft-producer"]
    assert isinstance(producer, PredictedTTFTProducer)
    producer.decode.set_slowness(0, 10.0)  # endpoint 0 decodes ten times slower
    director = Director(table, scheduler, hooks=scheduler)
    picks = {_decide(director, "p" * 400 + str(i), f"r{i}").charged_slot for i in range(5)}  # type: ignore[attr-defined]
    assert picks == {1}


def test_a_server_that_does_not_report_cached_tokens_teaches_no_miss_factor() -> None:
    from epp.requests.usage import usage_from_json

    director, producer = _setup(1)
    silent = usage_from_json(b'{"object":"text_completion","usage":{"prompt_tokens":1000,"completion_tokens":5}}')
    told = usage_from_json(
        b'{"object":"text_completion","usage":{"prompt_tokens":1000,"completion_tokens":5,'
        b'"prompt_tokens_details":{"cached_tokens":0}}}'
    )
    assert silent is not None and told is not None
    assert not silent.cached_reported and told.cached_reported
    system = "s" * 3600  # the index will believe the endpoint holds it
    for i, usage in enumerate([silent, silent, silent]):
        decision = _decide(director, system + f"{i:04d}", f"r{i}")
        director.first_chunk(decision, streamed=True)  # type: ignore[arg-type]
        director.run_deferred_hooks(decision)  # type: ignore[arg-type]
        director.complete(decision, usage)  # type: ignore[arg-type]
    assert not producer.misses  # "no details" is not "nothing was cached"
    decision = _decide(director, system + "9999", "r9")
    director.first_chunk(decision, streamed=True)  # type: ignore[arg-type]
    director.complete(decision, told)  # type: ignore[arg-type]
    assert producer.misses  # the server said it computed all 1,000 tokens the index thought were held


def _serve(director: Director, decision: object) -> None:
    """The response starts and ends; the prefix index learns the prompt. Its endpoint's engine step has ended by
    the next request (the step window since its last chunk is cleared)."""
    director.first_chunk(decision, streamed=True)  # type: ignore[arg-type]
    director.run_deferred_hooks(decision)  # type: ignore[arg-type]
    director.complete(decision, None)  # type: ignore[arg-type]
    for producer in director.hooks.producers:  # type: ignore[union-attr]
        if isinstance(producer, PredictedTTFTProducer):
            producer.phase.window_ends[:] = 0.0


def test_a_prefix_all_traffic_shares_is_common_and_leaves_no_endpoint_idle() -> None:
    """One system prompt for every conversation: the endpoint that held it first is not preferred for it, and the
    others are not charged for lacking it, so new conversations spread instead of queueing on the first one."""
    director, producer = _setup(4)
    system = "s" * 8192  # 2,048 tokens in 128 blocks of 64 bytes
    warm = set()
    for i in range(8):  # one at a time: while the prefix is seen by fewer than 2 x 4 requests, it is not common
        first = _decide(director, system + f"w{i}" * 50, f"w{i}")
        _serve(director, first)
        warm.add(first.charged_slot)  # type: ignore[attr-defined]
    assert len(warm) == 1  # it stays where it was first computed
    held = [_decide(director, system + f"u{i}" * 50, f"r{i}") for i in range(1, 9)]  # all in flight at once
    # without it the warm endpoint takes all eight: it saves 2,000 prompt tokens each, and 8 x 25 queue there
    assert {d.charged_slot for d in held[:4]} == {0, 1, 2, 3}  # type: ignore[attr-defined]
    hashes = producer.demand.counts
    assert max(count for count, _ in hashes.values()) > 15.9  # the system prompt's checkpoints saw every request


def test_a_group_prefix_with_a_small_share_keeps_its_affinity() -> None:
    from epp.plugins.prefix_demand import PrefixDemand

    demand = PrefixDemand()
    groups = [[g * 1000 + i for i in range(64)] for g in range(50)]  # 50 groups' block hashes, 64 blocks each
    for _ in range(20):
        for hashes in groups:
            demand.count(hashes, 64)
    assert demand.share(groups[0][63]) == pytest.approx(1 / 50, rel=0.05)
    blocks = np.array([64, 0, 0, 0, 0, 0, 0, 0])  # held by one endpoint of eight: 8 / 50 < 1 holder needed
    assert demand.common_blocks(groups[0], blocks) == 0
    shared = list(range(10**6, 10**6 + 64))
    for _ in range(15):
        demand.count([*shared, 7], 65)
    assert demand.common_blocks(shared, blocks) == 0  # seen by fewer than 2 requests per candidate: not yet
    for _ in range(200):
        demand.count([*shared, 7], 65)  # one prefix most traffic passes through
    assert demand.common_blocks(shared, blocks) == 64  # needs more holders than one: common
    assert demand.common_blocks(shared, np.full(8, 64)) == 64  # every endpoint holds it: common, none preferred


def _small_caches() -> tuple[Director, PredictedTTFTProducer, EndpointTable]:
    """Two endpoints whose KV caches hold 1,600 tokens each."""
    director, producer = _setup(2)
    table = producer.table
    assert table is not None
    table.cache_num_blocks[:2] = 100
    table.cache_block_size[:2] = 16
    return director, producer, table


def test_an_endpoint_whose_kv_cache_would_overflow_is_charged_the_recomputation() -> None:
    director, producer, _ = _small_caches()
    raw = orjson.dumps({"model": "m", "prompt": "a" * 4000, "max_tokens": 200})  # 1,000 + 200 tokens
    first = director.decide("r1", {}, parse_openai_body(raw, "/v1/completions"), raw, None)
    slot = first.charged_slot
    assert producer.kv_tokens[slot] == pytest.approx(1200)
    director.first_chunk(first, streamed=True)  # its queue is gone, its KV stays until it ends
    raw = orjson.dumps({"model": "m", "prompt": "b" * 4000, "max_tokens": 200})
    second = director.decide("r2", {}, parse_openai_body(raw, "/v1/completions"), raw, None)
    assert second.charged_slot != slot  # 1,200 more would not fit beside the first
    note = second.result.recall(producer._note_key)
    assert note is not None and note.kv_need == pytest.approx(1200)
    for decision in (first, second):
        director.complete(decision, None)
    assert not producer.kv_tokens.any()


def test_the_head_of_a_queue_drains_with_time_and_a_long_queue_only_by_its_head() -> None:
    drain = QueuedPrefillDrain(2)
    slots = np.array([0, 1])
    queued = np.array([1000.0, 4000.0])  # one request of 1,000 tokens; four of 1,000
    requests = np.array([1.0, 4.0])
    per_token = np.array([1e-4, 1e-4])  # 10,000 tokens/s
    assert drain.advance(slots, queued, requests, per_token, 0.0).tolist() == [0.0, 0.0]
    early = drain.advance(slots, queued, requests, per_token, 0.05)  # 500 tokens at full rate
    assert 0 < early[0] < 500 and early[0] == early[1]
    late = drain.advance(slots, queued, requests, per_token, 10.0)
    assert late.tolist() == pytest.approx([900.0, 900.0])  # at most 90 % of one request: the head
    drain.finished(1, 1000.0)
    assert drain.drained[1] == 0.0


def test_the_producer_prices_a_queue_lower_the_longer_its_head_has_been_in_prefill() -> None:
    director, producer = _setup(2)
    clock = [100.0]
    producer.clock = lambda: clock[0]
    first = _decide(director, "a" * 4000)  # 1,000 prompt tokens queued on one endpoint
    slot = first.charged_slot  # type: ignore[attr-defined]
    _decide(director, "b" * 40, "r2")
    at_pick = float(producer.drain.drained[slot])
    clock[0] += 5.0
    _decide(director, "c" * 40, "r3")
    assert at_pick < 1.0 < producer.drain.drained[slot] <= 900.0
    director.first_chunk(first, streamed=True)  # type: ignore[arg-type]
    assert producer.drain.drained[slot] == 0.0 and producer.queued_tokens[slot] == 0.0


def test_a_full_kv_cache_is_priced_as_the_turnovers_before_the_request_fits() -> None:
    director, producer, table = _small_caches()
    producer.kv_tokens[0] = 3200.0  # requests in flight there will hold twice the cache
    raw = orjson.dumps({"model": "m", "prompt": "a" * 4000, "max_tokens": 200})  # needs 1,000 + 200 more
    decision = director.decide("r1", {}, parse_openai_body(raw, "/v1/completions"), raw, None)
    assert decision.charged_slot == 1  # the endpoint with room
    note = decision.result.recall(producer._note_key)
    assert note is not None and note.full == 0.0
    director.first_chunk(decision, streamed=True)  # no queue left anywhere; its 1,200 KV tokens stay on slot 1
    cycle = state(table, prompt=b"a" * 4000)  # no max_tokens: 256 output tokens expected
    producer.produce(cycle, slots(0, 1))
    predicted = cycle.read(KEY)
    assert predicted is not None and predicted.full is not None
    # (3,200 + 1,000 + 256 - 1,600) / 1,600 and (1,200 + 1,256 - 1,600) / 1,600 turnovers of a full cache
    assert predicted.full.tolist() == pytest.approx([2856 / 1600, 856 / 1600])
    per_turnover = producer.model.coefficients[4]
    assert per_turnover > 0
    assert predicted.queueing.tolist() == pytest.approx((predicted.full * per_turnover).tolist())
    director.complete(decision, None)


def test_the_turnover_coefficient_is_learned_only_where_a_cache_was_full() -> None:
    parameters = PredictedTTFTParameters(slowness_rate=0.0)
    model = ttft_model(1, parameters)
    prior = model.coefficients[4]
    now = 1.0
    for _ in range(50):  # a pool below saturation: no cache full, whatever the TTFTs
        now += 0.1
        model.learn(0, ttft_features(4, 2000, 1), 0.3, now)
    assert model.coefficients[4] == pytest.approx(prior, rel=0.05)
    for i in range(200):  # past it: each turnover of a full cache costs 6 s
        now += 0.1
        full = 0.5 + (i % 5) * 0.3
        model.learn(0, ttft_features(4, 2000, 1, full), 0.3 + 6.0 * full, now)
    assert model.coefficients[4] == pytest.approx(6.0, rel=0.15)


def test_the_step_window_after_an_endpoints_last_chunk_counts_down_to_zero() -> None:
    phase = EngineStepPhase(3)
    phase.chunk(1, 10.0)
    assert phase.ends(slots(0, 1, 2), 9.0) is not None  # before the window ends, the arrays are read
    now = 10.0 + STEP_WINDOW / 4
    ends = phase.ends(slots(0, 1, 2), now)
    assert ends is not None  # no chunk seen at 0 and 2: nothing ahead there
    assert (ends - now).tolist() == [0.0, pytest.approx(0.75 * STEP_WINDOW), 0.0]
    assert phase.ahead_one(1, now) == pytest.approx(0.75 * STEP_WINDOW)
    assert phase.ahead_one(1, 10.0 + 2 * STEP_WINDOW) == 0.0  # the step has ended (or the engine idles)
    assert phase.ends(slots(0, 1, 2), 10.0 + STEP_WINDOW) is None  # every window has passed: nothing to read
    phase.reset(1)
    assert phase.ends(slots(1), 10.0).tolist() == [10.0]  # type: ignore[union-attr]


def test_a_response_chunk_prices_the_step_in_progress_on_its_endpoint_only() -> None:
    director, producer = _setup(2)
    clock = [100.0]
    producer.clock = lambda: clock[0]
    first = _decide(director, "a" * 400, "r1")
    second = _decide(director, "b" * 400, "r2")
    director.first_chunk(first, streamed=True)  # type: ignore[arg-type]
    director.first_chunk(second, streamed=True)  # type: ignore[arg-type]
    producer.phase.window_ends[:] = 0.0
    slot = first.charged_slot  # type: ignore[attr-defined]
    clock[0] += 1.0
    director.response_chunk(first)  # type: ignore[arg-type]  # its engine just ended a step
    clock[0] += STEP_WINDOW / 2
    ahead = [producer.phase.ahead_one(s, clock[0]) for s in (0, 1)]
    assert ahead[slot] == pytest.approx(STEP_WINDOW / 2) and ahead[1 - slot] == 0.0
    probe = _decide(director, "c" * 400, "r3")
    assert probe.charged_slot == 1 - slot  # type: ignore[attr-defined]  # otherwise alike: the idle step wins
    note = probe.result.recall(producer._note_key)  # type: ignore[attr-defined]
    assert note is not None and note.ahead == 0.0  # what the model learns this response's TTFT with
    director.complete(first, None)  # type: ignore[arg-type]
    clock[0] += STEP_WINDOW
    director.response_chunk(first)  # type: ignore[arg-type]  # a chunk after the end counts no more
    assert producer.phase.ahead_one(slot, clock[0]) == 0.0


def test_the_model_learns_what_the_step_in_progress_adds() -> None:
    model = ttft_model(1, PredictedTTFTParameters(slowness_rate=0.0))
    rng = random.Random(5)
    for i in range(400):
        work, ahead = rng.uniform(200, 4000), rng.uniform(0, STEP_WINDOW)
        truth = 0.02 + work / 15_000 + 0.6 * ahead  # 60 ms of a step still to run when the window starts
        model.learn(0, ttft_features(0, work, 0, 0.0, ahead), truth, 1.0 + i * 0.01)
    assert model.coefficients[5] == pytest.approx(0.6 * STEP_WINDOW, rel=0.1)
