"""The reference's decision scenarios and per-plugin expectations, computed by hand."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest

from epp.config.schema import EndpointPickerConfig, load_config_file, load_config_text
from epp.datastore.table import Endpoint, EndpointTable
from epp.director import Decision, Director
from epp.plugins.pickers import PickerParameters, WeightedRandomPicker
from epp.plugins.prefix import ApproxPrefixCacheProducer, block_hashes
from epp.plugins.prefix_index import as_keys
from epp.requests.openai import parse_openai_body
from epp.scheduling.framework import build_scheduler
from epp.scheduling.plugin import CycleState
from epp.scheduling.types import LLMRequest

ALL_FOUR = """
plugins: [{type: queue-scorer}, {type: kv-cache-utilization-scorer}, {type: prefix-cache-scorer},
          {type: lora-affinity-scorer}]
"""


def reference_blend() -> EndpointPickerConfig:
    """The reference's profile (queue 2, KV 2, prefix 3: config/default-plugins.yaml, the Istio guide's)."""
    return load_config_file(str(Path(__file__).resolve().parents[3] / "config" / "default-plugins.yaml"))


def pool(*pods: tuple[float, float, list[str]]) -> EndpointTable:
    table = EndpointTable(16)
    for i, (queue, kv, adapters) in enumerate(pods):
        slot = table.add(Endpoint(f"192.168.1.{i + 1}", 8000, name=f"pod-{i}"))
        table.waiting_queue[slot] = queue
        table.kv_usage[slot] = kv
        table.set_lora(slot, frozenset(adapters), frozenset(), 0)
    return table


def request(target: str = "my-model-12345", prompt: str = "test1") -> LLMRequest:
    return LLMRequest("r", "my-model", target, {}, prompt_bytes=prompt.encode())


def pick(table: EndpointTable, config: str = ALL_FOUR, req: LLMRequest | None = None) -> str:
    scheduler = build_scheduler(load_config_text(config, "t"), table)
    result = scheduler.schedule(req or request(), table, table.live_slots())
    return table.hostports[int(result.primary[0])]


def test_scenario_1_lower_queue_and_kv_wins() -> None:
    assert pick(pool((3, 0.2, []), (0, 0.1, []), (10, 0.2, []))) == "192.168.1.2:8000"


def test_scenario_2_active_lora_with_low_queue() -> None:
    table = pool((0, 0.2, ["foo", "bar"]), (0, 0.1, ["foo", "sql-lora-1fdg2"]), (10, 0.2, ["foo", "bar"]))
    assert pick(table, req=request("sql-lora-1fdg2")) == "192.168.1.2:8000"


def test_scenario_5_lora_affinity_beats_kv() -> None:
    # scores 1.8 / 2.6 / 1.7 as in the reference
    table = pool((10, 0.2, ["foo", "bar"]), (10, 0.4, ["foo", "sql-lora-1fdg2"]), (10, 0.3, ["foo"]))
    assert pick(table, req=request("sql-lora-1fdg2", "test3")) == "192.168.1.2:8000"


def test_scenario_7_sheddable_not_dropped_picks_best() -> None:
    table = pool((6, 0.2, ["foo", "bar", "sql-lora-1fdg2"]), (0, 0.85, ["foo"]), (10, 0.9, ["foo"]))
    assert pick(table, req=request("sql-lora-1fdg2", "test4")) == "192.168.1.1:8000"


def test_prefix_affinity_and_load_balance() -> None:
    table = pool((0, 0, []), (0, 0, []), (0, 0, []))
    scheduler = build_scheduler(reference_blend(), table)
    system = "You are a careful assistant. " * 40
    first = scheduler.schedule(request(prompt=system + "Q1"), table, table.live_slots())
    scheduler.pre_request(request(prompt=system + "Q1"), first, table)
    home = int(first.primary[0])
    for i in range(5):  # even load: the shared prefix keeps the requests on the same endpoint
        req = request(prompt=f"{system}Q{i + 2}")
        result = scheduler.schedule(req, table, table.live_slots())
        scheduler.pre_request(req, result, table)
        assert int(result.primary[0]) == home
    # Load grows there (queue and KV): 2·0 + 2·0.1 + 3·(18/19) = 3.04 < 2·1 + 2·1 + 0 = 4 elsewhere.
    table.waiting_queue[home] = 20
    table.kv_usage[home] = 0.9
    table.waiting_queue[[s for s in table.live_slots() if s != home]] = 0
    req = request(prompt=system + "Q9")
    assert int(scheduler.schedule(req, table, table.live_slots()).primary[0]) != home


def test_subset_of_candidates_is_respected() -> None:
    table = pool((0, 0.1, []), (5, 0.5, []), (9, 0.9, []))
    scheduler = build_scheduler(load_config_text(ALL_FOUR, "t"), table)
    subset = np.array([table.slot_of("pod-1"), table.slot_of("pod-2")], dtype=np.intp)
    assert table.hostports[int(scheduler.schedule(request(), table, subset).primary[0])] == "192.168.1.2:8000"


def test_fallbacks_from_max_num_of_endpoints() -> None:
    table = pool((0, 0.1, []), (5, 0.5, []), (9, 0.9, []))
    config = "plugins: [{type: queue-scorer}, {type: max-score-picker, parameters: {maxNumOfEndpoints: 3}}]"
    scheduler = build_scheduler(load_config_text(config, "t"), table)
    slots = scheduler.schedule(request(), table, table.live_slots()).primary
    assert [table.hostports[int(s)] for s in slots] == ["192.168.1.1:8000", "192.168.1.2:8000", "192.168.1.3:8000"]


def test_weighted_random_distribution_within_bounds() -> None:
    table = pool((0, 0, []), (0, 0, []), (0, 0, []))
    picker = WeightedRandomPicker("w", PickerParameters())
    scores = np.array([0.5, 0.25, 0.25])
    counts = Counter(int(picker.pick(CycleState(request(), table), table.live_slots(), scores)[0]) for _ in range(6000))
    # A-Res selects with probability proportional to weight: 0.5 / 0.25 / 0.25 (within 4 sigma)
    for slot, share in zip(table.live_slots(), scores, strict=True):
        sigma = (6000 * share * (1 - share)) ** 0.5
        assert abs(counts[int(slot)] - 6000 * share) < 4 * sigma


def test_ties_are_broken_uniformly_at_random() -> None:
    table = pool((0, 0, []), (0, 0, []))
    counts = Counter(pick(table) for _ in range(400))
    assert min(counts.values()) > 140


def test_block_hashes_are_chained_and_include_a_partial_tail() -> None:
    hashes = block_hashes(b"a" * 64 * 2 + b"tail", b"m", 64, 256)
    assert len(hashes) == 3 and len(set(hashes)) == 3
    assert block_hashes(b"short", b"m", 64, 256) == []
    assert block_hashes(b"a" * 64 * 2, b"m", 64, 256)[:2] == hashes[:2]
    assert block_hashes(b"a" * 64 * 2, b"other-model", 64, 256)[0] != hashes[0]


def test_prefix_index_forgets_endpoints_that_leave() -> None:
    table = pool((0, 0, []), (0, 0, []))
    scheduler = build_scheduler(load_config_text("plugins: [{type: prefix-cache-scorer}]", "t"), table)
    req = request(prompt="x" * 500)
    result = scheduler.schedule(req, table, table.live_slots())
    scheduler.pre_request(req, result, table)
    producer = scheduler.producers[0]
    assert len(producer.index) > 0  # type: ignore[attr-defined]
    table.remove(table.endpoint(int(result.primary[0])).key)
    assert len(producer.index) == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("config", ["plugins: [{type: random-picker}]"])
def test_random_picker_config(config: str) -> None:
    table = pool((0, 0, []), (9, 0.9, []))
    assert len({pick(table, config) for _ in range(60)}) == 2


@pytest.mark.parametrize("seed", range(6))
def test_two_step_prefix_match_equals_matching_every_block_at_once(seed: int) -> None:
    """The producer hashes FIRST_WALK_BLOCKS blocks and goes on only while every one is held; the scores and
    the index after pre-request must be those of hashing and matching the whole prompt."""
    from epp.plugins.prefix import FIRST_WALK_BLOCKS, STATE_KEY

    rng = np.random.default_rng(seed)
    table = EndpointTable(8)
    for i in range(6):
        table.add(Endpoint(f"10.0.0.{i + 1}", 8000))
    scheduler = build_scheduler(reference_blend(), table)
    producer = next(p for p in scheduler.producers if isinstance(p, ApproxPrefixCacheProducer))
    words = [f"w{k} " for k in range(40)]
    prefixes = ["".join(rng.choice(words, int(rng.integers(10, 400)))) for _ in range(5)]
    for i in range(40):
        prompt = prefixes[int(rng.integers(len(prefixes)))] + "".join(rng.choice(words, int(rng.integers(0, 300))))
        req = LLMRequest(f"r{i}", "m", "m", {}, prompt_bytes=prompt.encode())
        expected_hashes = block_hashes(req.prompt_bytes, b"m", 64, 256)
        expected = producer.index.match_by_slot(as_keys(expected_hashes)) if expected_hashes else np.zeros(0)
        result = scheduler.schedule(req, table, table.live_slots())
        match = result.cycle_state.read(STATE_KEY)
        assert match is not None
        assert match.total_blocks == len(expected_hashes)
        got = match.matched_blocks(table.live_slots())
        want = np.array([expected[s] if s < len(expected) else 0 for s in table.live_slots()])
        assert got.tolist() == want.tolist()
        scheduler.pre_request(req, result, table)
        if expected_hashes:
            slot = int(result.primary[0])
            assert producer.index.holds(slot, as_keys(expected_hashes)).all()
    assert FIRST_WALK_BLOCKS < 256


def test_deferred_pre_request_hooks_run_once_after_send_or_at_the_latest_at_completion() -> None:
    from epp.extproc.core import ExtProcStream
    from epp.requests.parsers import openai_parser
    from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    def messages(prompt: str) -> list[pb.ProcessingRequest]:
        headers = pb.ProcessingRequest()
        headers.request_headers.headers.headers.add(key=":path", raw_value=b"/v1/completions")
        body = pb.ProcessingRequest()
        body.request_body.body = b'{"model":"m","prompt":"' + prompt.encode() + b'"}'
        body.request_body.end_of_stream = True
        response = pb.ProcessingRequest()
        response.response_headers.headers.headers.add(key=":status", raw_value=b"200")
        return [headers, body, response]

    table = EndpointTable(4)
    table.add(Endpoint("10.0.0.1", 8000))
    scheduler = build_scheduler(reference_blend(), table)
    index = next(p for p in scheduler.producers if isinstance(p, ApproxPrefixCacheProducer)).index
    director = Director(table, scheduler, hooks=scheduler, defer_hooks=True)
    for call_after_send in (True, False):
        before = len(index)
        stream = ExtProcStream(director, openai_parser)
        first, body, response = messages(f"{call_after_send} " * 100)
        stream.process(first)
        stream.process(body)
        assert len(index) == before, "the insert must wait until the response is sent"
        if call_after_send:
            stream.after_send()
            assert len(index) > before
        stream.process(response)
        assert (len(index) > before) is call_after_send, "only after_send() or completion runs them"
        stream.close()
        grown = len(index)
        assert grown > before
        stream.after_send()
        assert len(index) == grown, "hooks run once"


def decide_on(director: Director, request_id: str, prompt: str) -> Decision:
    raw = orjson.dumps({"model": "m", "prompt": prompt})
    parsed = parse_openai_body(raw, "/v1/completions")
    return director.decide(request_id, {":path": "/v1/completions"}, parsed, raw, None)


def test_what_a_request_charged_to_a_departed_endpoint_never_lands_on_the_next_holder_of_its_slot() -> None:
    table = EndpointTable(4)
    old = table.add(Endpoint("10.0.0.1", 8000, name="a"))
    scheduler = build_scheduler(reference_blend(), table)
    index = next(p for p in scheduler.producers if isinstance(p, ApproxPrefixCacheProducer)).index
    director = Director(table, scheduler, hooks=scheduler, defer_hooks=True)
    departed = decide_on(director, "r1", "x" * 4000)  # its prefix insert waits for the response
    assert departed.charged_slot == old and table.inflight_requests[old] == 1.0
    table.remove("a")
    assert table.add(Endpoint("10.0.0.2", 8000, name="b")) == old  # the slot is reused at once
    current = decide_on(director, "r2", "y" * 4000)
    director.run_deferred_hooks(current)
    held = len(index)
    director.complete(departed, None)  # its deferred hook and its release both come too late
    assert table.inflight_requests[old] == 1.0, "b's own request is still in flight"
    assert len(index) == held, "a's prompt must not be recorded as held by b"
    director.complete(current, None)
    assert table.inflight_requests[old] == 0.0


def test_requests_sharing_a_client_chosen_request_id_each_record_their_own_prompt() -> None:
    table = EndpointTable(4)
    table.add(Endpoint("10.0.0.1", 8000, name="a"))
    scheduler = build_scheduler(reference_blend(), table)
    producer = next(p for p in scheduler.producers if isinstance(p, ApproxPrefixCacheProducer))
    director = Director(table, scheduler, hooks=scheduler, defer_hooks=True)
    prompts = ["first prompt " * 300, "second prompt " * 300]
    decisions = [decide_on(director, "same-id", prompt) for prompt in prompts]
    for decision in decisions:
        director.complete(decision, None)
    for prompt in prompts:
        keys = as_keys(block_hashes(prompt.encode(), b"m", 64, 256))
        assert producer.index.holds(0, keys).all(), prompt[:12]
