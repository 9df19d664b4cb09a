"""disagg-profile-handler with prefix-based-pd-decider, the multi-profile loop, and profile-handler validation."""

from __future__ import annotations

import re

import numpy as np
import orjson
import pytest

from epp.config.schema import ConfigError, load_config_text
from epp.datastore.table import EndpointTable
from epp.director import Director
from epp.plugins.disagg import PREFILLER_HEADER, AlwaysDisaggPDDecider, PrefixBasedPDDecider
from epp.plugins.prefix import ApproxPrefixCacheProducer
from epp.requests.openai import parse_openai_body
from epp.scheduling.framework import build_scheduler
from epp.scheduling.types import SchedulingError
from tests.support.plugins import make, pool, request, slots, state, with_match

PD = """
plugins:
- type: prefill-filter
- type: decode-filter
- type: prefix-cache-scorer
- type: queue-scorer
- type: prefix-based-pd-decider
  parameters: {nonCachedTokens: 256}
- type: disagg-profile-handler
  parameters:
    profiles: {decode: decode, prefill: prefill}
    deciders: {prefill: prefix-based-pd-decider}
schedulingProfiles:
- name: prefill
  plugins: [{pluginRef: prefill-filter}, {pluginRef: queue-scorer}]
- name: decode
  plugins: [{pluginRef: decode-filter}, {pluginRef: prefix-cache-scorer, weight: 2}, {pluginRef: queue-scorer}]
"""


HANDLER = """- type: disagg-profile-handler
  parameters:
    profiles: {decode: decode, prefill: prefill}
    deciders: {prefill: prefix-based-pd-decider}
"""
assert HANDLER in PD


def pd_pool(roles: tuple[str, ...] = ("prefill", "prefill", "decode", "decode")) -> EndpointTable:
    return pool(len(roles), [{"llm-d.ai/role": role} for role in roles])


# --- prefix-based-pd-decider ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held_blocks", "expected"),
    [
        (0, True),  # 4000 bytes → 1000 tokens, nothing cached: 1000 ≥ 256
        (50, False),  # 50 blocks · 16 tokens = 800 cached → 200 uncached < 256
        (46, True),  # 736 cached → 264 uncached ≥ 256
    ],
)
def test_prefix_decider_counts_uncached_tokens_on_the_decode_endpoint(held_blocks: int, expected: bool) -> None:
    table = pool(2)
    decider = make(PrefixBasedPDDecider, {"nonCachedTokens": 256})
    cycle = with_match(state(table, prompt=b"x" * 4000), 63, {1: held_blocks})
    assert decider.disaggregate(cycle, 1, slots(0, 1)) is expected


def test_prefix_decider_block_size_follows_the_producer() -> None:
    table = pool(2)
    decider = make(PrefixBasedPDDecider, {"nonCachedTokens": 256})
    table.cache_block_size[0] = 32  # autoTune: the first candidate's served block size
    cycle = with_match(state(table, prompt=b"x" * 4000), 63, {1: 24})
    assert decider.disaggregate(cycle, 1, slots(0, 1)) is False  # 24 · 32 = 768 cached → 232 uncached
    producer = make(ApproxPrefixCacheProducer, {"autoTune": False, "blockSizeTokens": 64})
    decider.connect({"producer": producer})
    assert decider.disaggregate(cycle, 1, slots(0, 1)) is False  # 24 · 64 = 1536 cached
    cycle = with_match(state(table, prompt=b"x" * 4000), 63, {1: 11})
    assert decider.disaggregate(cycle, 1, slots(0, 1)) is True  # 11 · 64 = 704 cached → 296 uncached


def test_prefix_decider_stays_on_decode_for_short_prompts_off_switch_and_no_prefix_information() -> None:
    table = pool(2)
    long_cold = with_match(state(table, prompt=b"x" * 4000), 63, {1: 0})
    assert not make(PrefixBasedPDDecider).disaggregate(long_cold, 1, slots(0, 1))  # nonCachedTokens 0: off
    decider = make(PrefixBasedPDDecider, {"nonCachedTokens": 256})
    short = with_match(state(table, prompt=b"x" * 1000), 16, {1: 0})  # 250 tokens
    assert not decider.disaggregate(short, 1, slots(0, 1))
    assert not decider.disaggregate(state(table, prompt=b"x" * 4000), 1, slots(0, 1))  # no prefix information
    longer = make(PrefixBasedPDDecider, {"nonCachedTokens": 256, "promptTokens": 2000})
    assert not longer.disaggregate(long_cold, 1, slots(0, 1))
    assert make(AlwaysDisaggPDDecider).disaggregate(state(table), 1, slots(0, 1))


# --- the handler through the framework ----------------------------------------------------------------


def test_long_cold_prompt_gets_a_prefill_endpoint_and_the_header() -> None:
    table = pd_pool()
    scheduler = build_scheduler(load_config_text(PD, "t"), table)
    result = scheduler.schedule(request(prompt=b"p" * 4000), table, table.live_slots())
    assert result.primary_profile == "decode" and int(result.primary[0]) in (2, 3)
    prefill = int(result.profile_results["prefill"].slots[0])
    assert prefill in (0, 1)
    assert result.headers == {PREFILLER_HEADER: f"10.0.0.{prefill + 1}:8000"}


def test_short_or_cached_prompts_stay_on_decode() -> None:
    table = pd_pool()
    scheduler = build_scheduler(load_config_text(PD, "t"), table)
    short = scheduler.schedule(request(prompt=b"p" * 400), table, table.live_slots())  # 100 tokens < 256
    assert list(short.profile_results) == ["decode"] and short.headers == {}
    first = request(prompt=b"q" * 4000, request_id="1")
    result = scheduler.schedule(first, table, table.live_slots())
    scheduler.pre_request(first, result, table)  # the prefix index learns it on the decode endpoint
    again = scheduler.schedule(request(prompt=b"q" * 4000, request_id="2"), table, table.live_slots())
    # the same decode endpoint holds all 63 blocks (1008 tokens ≥ 1000): nothing left to prefill elsewhere
    assert int(again.primary[0]) == int(result.primary[0]) and list(again.profile_results) == ["decode"]


def test_no_decode_endpoint_is_an_error_and_no_prefill_endpoint_is_not() -> None:
    table = pd_pool(("prefill", "prefill"))
    scheduler = build_scheduler(load_config_text(PD, "t"), table)
    with pytest.raises(SchedulingError, match="failed to find available decode workers"):
        scheduler.schedule(request(prompt=b"p" * 4000), table, table.live_slots())
    table = pd_pool(("decode", "decode"))
    scheduler = build_scheduler(load_config_text(PD, "t"), table)
    result = scheduler.schedule(request(prompt=b"p" * 4000), table, table.live_slots())
    assert list(result.profile_results) == ["decode"] and result.headers == {}


def test_director_sends_the_prefiller_header_upstream_and_charges_both_endpoints() -> None:
    table = pd_pool()
    scheduler = build_scheduler(load_config_text(PD, "t"), table)
    director = Director(table, scheduler, hooks=scheduler)
    raw = orjson.dumps({"model": "m", "prompt": "z" * 4000})
    decision = director.decide("r", {}, parse_openai_body(raw, "/v1/completions"), raw, None)
    assert decision.destination in ("10.0.0.3:8000", "10.0.0.4:8000")
    assert decision.headers[PREFILLER_HEADER] in ("10.0.0.1:8000", "10.0.0.2:8000")
    assert table.inflight_requests[decision.charged_slot] == 1 and decision.charged_slot in (2, 3)
    # the prefill endpoint carries the request and its prompt tokens (4000 bytes ≈ 1000) until it ends
    prefill = decision.charged_prefill_slot
    assert prefill in (0, 1) and table.inflight_requests[prefill] == 1
    assert table.inflight_tokens[prefill] == decision.request.estimated_input_tokens > 0
    director.complete(decision, None)
    assert table.inflight_requests.sum() == 0 and table.inflight_tokens.sum() == 0


@pytest.mark.parametrize("prefill_profile", ["prefill", "prefill-stage"])
def test_a_renamed_prefill_profile_is_charged_and_learned_like_the_default_name(prefill_profile: str) -> None:
    config = PD.replace("prefill: prefill}", f"prefill: {prefill_profile}}}").replace(
        "- name: prefill\n", f"- name: {prefill_profile}\n"
    )
    table = pd_pool()
    scheduler = build_scheduler(load_config_text(config, "t"), table)
    producer = next(p for p in scheduler.producers if isinstance(p, ApproxPrefixCacheProducer))
    director = Director(table, scheduler, hooks=scheduler)
    raw = orjson.dumps({"model": "m", "prompt": "r" * 4000})
    decision = director.decide("r", {}, parse_openai_body(raw, "/v1/completions"), raw, None)
    result = decision.result
    assert result.prefill_profile == prefill_profile and result.prefill is result.profile_results[prefill_profile]
    prefill = int(result.prefill.slots[0])
    assert prefill in (0, 1) and decision.headers[PREFILLER_HEADER] == f"10.0.0.{prefill + 1}:8000"
    assert decision.charged_prefill_slot == prefill and table.inflight_requests[prefill] == 1, "charged"
    assert producer.index.slot_size(prefill) > 0, "the prefix index learned the prompt on the prefill endpoint"
    director.complete(decision, None)
    assert table.inflight_requests.sum() == 0


def test_legacy_flat_parameters() -> None:
    text = PD.replace(
        """    profiles: {decode: decode, prefill: prefill}
    deciders: {prefill: prefix-based-pd-decider}""",
        """    decodeProfile: decode
    prefillProfile: prefill
    prefillDeciderPluginName: prefix-based-pd-decider""",
    )
    table = pd_pool()
    result = build_scheduler(load_config_text(text, "t"), table).schedule(
        request(prompt=b"p" * 4000), table, table.live_slots()
    )
    assert set(result.profile_results) == {"decode", "prefill"}


# --- validation ------------------------------------------------------------------------------------------


def handler_with(parameters: str) -> str:
    head, _, tail = PD.partition("- type: disagg-profile-handler\n")
    _, _, rest = tail.partition("schedulingProfiles:")
    return f"{head}- type: disagg-profile-handler\n  parameters: {parameters}\nschedulingProfiles:{rest}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (PD.replace(HANDLER, ""),
         r"schedulingProfiles: 2 profiles \(prefill, decode\) need a profile handler that runs them; declare one "
         r"under plugins, e\.g\. disagg-profile-handler"),
        (handler_with("{deciders: {prefill: nope}}"),
         r"plugins\[5\]\.parameters\.deciders\.prefill: 'nope' is not declared under plugins; declared deciders: "
         r"prefix-based-pd-decider"),
        (handler_with("{deciders: {prefill: queue-scorer}}"),
         r"plugins\[5\]\.parameters\.deciders\.prefill: 'queue-scorer' is a scorer, not a decider"),
        (handler_with("{profiles: {decode: dec}}"),
         r"plugins\[5\]\.parameters\.profiles\.decode: no scheduling profile named 'dec'; declared: prefill, decode"),
        (handler_with("{profiles: {prefill: pre}, deciders: {prefill: prefix-based-pd-decider}}"),
         r"plugins\[5\]\.parameters\.profiles\.prefill: a prefill decider is set but no scheduling profile is named "
         r"'pre'"),
        (handler_with("{profiles: {encode: enc}}"),
         r"plugins\[5\]\.parameters\.profiles\.encode: unknown key \(encode disaggregation is not supported\); "
         r"valid keys: decode, prefill"),
        (handler_with("{decodeProfile: decode, deciders: {prefill: prefix-based-pd-decider}}"),
         r"plugins\[5\]\.parameters\.decodeProfile: the flat form cannot be mixed with deciders"),
        (handler_with("{profiles: {decode: 7}}"), r"plugins\[5\]\.parameters\.profiles\.decode: expected a non-empty "),
        (PD.replace(HANDLER, "- type: single-profile-handler\n"),
         r"plugins\[5\]: single-profile-handler runs exactly one profile but 2 are declared \(prefill, decode\); "
         r"use a multi-profile handler such as disagg-profile-handler"),
        ("plugins: [{type: single-profile-handler}, {type: disagg-profile-handler}, {type: queue-scorer}]",
         r"plugins: several profile handlers \(single-profile-handler, disagg-profile-handler\); declare at most one"),
        (PD.replace("{pluginRef: prefill-filter}, ", "{pluginRef: prefix-based-pd-decider}, "),
         r"schedulingProfiles\[0\]\.plugins\[0\]\.pluginRef: prefix-based-pd-decider is a decider; profiles take "
         r"filters, scorers and pickers"),
        ("plugins: [{type: prefix-based-pd-decider, parameters: {nonCachedTokens: -1}}]",
         r"plugins\[0\]\.parameters: nonCachedTokens must be >= 0"),
    ],
)  # fmt: skip
def test_profile_handler_errors_name_the_path_and_the_fix(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config_text(text, "cfg.yaml")
    assert any(re.search(message, line) for line in error.value.errors), error.value.errors


def test_one_profile_gets_the_single_profile_handler_and_the_fast_path() -> None:
    config = load_config_text("plugins: [{type: queue-scorer}]", "t")
    assert config.plugins["single-profile-handler"].type == "single-profile-handler"
    table = pool(2)
    scheduler = build_scheduler(config, table)
    assert scheduler.profile is not None  # schedule() runs the profile inline
    pd = build_scheduler(load_config_text(PD, "t"), pd_pool())
    assert pd.profile is None and pd.profile_names == ["prefill", "decode"]
    np.testing.assert_array_equal(scheduler.schedule(request(), table, slots(1)).primary, [1])
