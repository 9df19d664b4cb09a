"""Every parameter of every registered plugin type either changes what the plugin does or is refused naming
itself: nothing is accepted and ignored (the plugin half of tests/unit/test_every_input.py).

The parameters a plugin accepts are asked of the plugin itself: an unknown key makes its parser list the
known ones (aliases and the keys of a hand-written parser included). Each must have a row in PARAMETERS:
- `Changes(value, observe, base)`: `observe` builds the plugin from parsed parameters (`base`, then `base` with
  the parameter set to `value`) and returns what a request or the saturation check would see — scores, kept
  candidates, picks, predictions, learned state; the two must differ;
- `Refused(value, says)`: giving it is a configuration error naming the parameter (a value this build cannot
  honour, or any value other than the one it always uses).
A row's key is `TYPE.parameter`, or `TYPE.parameter.field` for a field of a nested parameter.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from epp.config.schema import load_config_text
from epp.datalayer.params import CoreMetricsExtractorParams, MetricsDataSourceParams
from epp.datalayer.scraper import _tls_context as scrape_tls_context
from epp.datalayer.scraper import scrape_url
from epp.datastore.table import Endpoint
from epp.plugins.disagg import PrefixBasedPDDecider
from epp.plugins.filters import LabelSelectorFilter, PrefixCacheAffinityFilter
from epp.plugins.fleet_model import ttft_features
from epp.plugins.latency import KEY, PredictedTTFTProducer
from epp.plugins.latency_scorer import PredictedTTFTScorer
from epp.plugins.load import ActiveRequestScorer, LoadAwareScorer, TokenLoadScorer
from epp.plugins.markers import CoreMetricsExtractor, MetricsDataSource
from epp.plugins.nohitlru import NoHitLRUScorer
from epp.plugins.pickers import MaxScorePicker, RandomPicker, WeightedRandomPicker
from epp.plugins.prediction import Prediction
from epp.plugins.prefix import STATE_KEY, ApproxPrefixCacheProducer
from epp.plugins.saturation import ConcurrencyDetector, UtilizationDetector
from epp.plugins.session import SessionAffinityScorer
from epp.scheduling.framework import build_scheduler
from epp.scheduling.plugin import ParameterError, Plugin
from epp.scheduling.registry import plugin_types
from epp.scheduling.types import ProfileResult, SchedulingResult
from tests.support.plugins import make, pool, request, slots, state, with_match

Raw = Mapping[str, Any]
Observer = Callable[[Raw], object]


@dataclass(frozen=True)
class Changes:
    value: object
    observe: Observer
    base: Raw = field(default_factory=dict)


@dataclass(frozen=True)
class Refused:
    value: object
    says: str


def rounded(values: Any) -> tuple[float, ...]:
    return tuple(round(float(v), 9) for v in np.ravel(np.asarray(values, dtype=np.float64)))


def seeded(plugin: Plugin) -> Plugin:
    """Both builds of a plugin that draws random numbers draw the same ones."""
    if hasattr(plugin, "rng"):
        plugin.rng = np.random.default_rng(7)
    return plugin


def picked(slot: int) -> SchedulingResult:
    return SchedulingResult({"default": ProfileResult(slots(slot))}, "default")


# --- observers: one per plugin type, each a small situation the type's parameters all act on ---------------


def active_requests(raw: Raw) -> object:
    table = pool(4)
    table.inflight_requests[:4] = [0, 1, 2, 4]
    return rounded(make(ActiveRequestScorer, raw).score(state(table), slots(0, 1, 2, 3)))


def token_load(raw: Raw) -> object:
    table = pool(3)
    table.inflight_tokens[:3] = [0, 1_000_000, 3_000_000]
    return rounded(make(TokenLoadScorer, raw).score(state(table), slots(0, 1, 2)))


def queue_load(raw: Raw) -> object:
    table = pool(3)
    table.waiting_queue[:3] = [0, 50, 100]
    return rounded(make(LoadAwareScorer, raw).score(state(table), slots(0, 1, 2)))


def label_selection(cls: type[LabelSelectorFilter]) -> Observer:
    def observe(raw: Raw) -> object:
        table = pool(3, labels=[{"role": "decode", "zone": "a"}, {"role": "prefill"}, {}])
        return tuple(make(cls, raw).filter(state(table), slots(0, 1, 2)))

    return observe


def utilization(raw: Raw) -> object:
    table = pool(4)
    table.waiting_queue[:4] = [0, 6, 0, 0]
    table.kv_usage[:4] = [0.1, 0.1, 0.85, 0.1]
    table.metrics_time[:4] = [100.0, 100.0, 100.0, 99.5]  # the last one scraped half a second ago
    detector = make(UtilizationDetector, raw)
    detector.clock = lambda: 100.0
    candidates = slots(0, 1, 2, 3)
    return tuple(detector.filter(state(table), candidates)), round(detector.saturation(table, candidates, 100.0), 9)


def concurrency(raw: Raw) -> object:
    table = pool(4)
    table.inflight_requests[:4] = [0, 50, 100, 120]
    table.inflight_tokens[:4] = [0, 500_000, 1_000_000, 2_000_000]
    detector = make(ConcurrencyDetector, raw)
    candidates = slots(0, 1, 2, 3)
    return tuple(detector.filter(state(table), candidates)), round(detector.saturation(table, candidates, 0.0), 9)


def picks(cls: type[MaxScorePicker | RandomPicker | WeightedRandomPicker]) -> Observer:
    def observe(raw: Raw) -> object:
        picker = seeded(make(cls, raw))
        assert isinstance(picker, cls)
        scores = np.array([0.1, 0.9, 0.5, 0.7])
        return tuple(tuple(picker.pick(state(pool(4)), slots(0, 1, 2, 3), scores)) for _ in range(5))

    return observe


def prefix_affinity_filter(raw: Raw) -> object:
    table = pool(3)
    table.inflight_tokens[:3] = [1000, 0, 0]
    affinity = seeded(make(PrefixCacheAffinityFilter, raw))
    assert isinstance(affinity, PrefixCacheAffinityFilter)
    kept = []
    for _ in range(20):  # endpoint 0 holds 9 of 10 blocks, endpoint 1 holds 2
        kept.append(tuple(affinity.filter(with_match(state(table), 10, {0: 9, 1: 2}), slots(0, 1, 2))))
    return tuple(kept)


def no_hit_lru(raw: Raw) -> object:
    table = pool(3)
    scorer = make(NoHitLRUScorer, raw)
    scorer.bind(table)
    for slot in (2, 0, 1):  # three cold requests, picked in turn
        cycle = state(table)
        scorer.score(cycle, slots(0, 1, 2))
        scorer.pre_request(cycle, picked(slot))
    return rounded(scorer.score(state(table), slots(0, 1, 2)))


def prefix_producer(raw: Raw) -> object:
    table = pool(1)
    table.cache_block_size[0] = 32  # the server's own block size (tokens) and KV cache size (blocks)
    table.cache_num_blocks[0] = 8
    producer = make(ApproxPrefixCacheProducer, raw)
    producer.bind(table)
    prompt = bytes(range(97, 123)) * 100  # 2,600 bytes
    first = state(table, prompt=prompt)
    producer.produce(first, slots(0))
    producer.pre_request(first, picked(0))
    again = state(table, prompt=prompt)
    producer.produce(again, slots(0))
    match = again.read(STATE_KEY)
    assert match is not None
    return match.total_blocks, int(match.matched_blocks(slots(0))[0]), producer.blocks_held(0)


def pd_decider(raw: Raw) -> object:
    table = pool(2)
    decider = make(PrefixBasedPDDecider, raw)
    decisions = []
    for prompt in (b"p" * 400, b"p" * 4000):  # 100 and 1,000 prompt tokens, none cached
        cycle = with_match(state(table, prompt=prompt), len(prompt) // 64, {})
        decisions.append(decider.disaggregate(cycle, 0, slots(0, 1)))
    return tuple(decisions)


DISAGG_CONFIG = """
plugins:
- {type: label-selector-filter, name: first, parameters: {matchLabels: {n: "0"}}}
- {type: label-selector-filter, name: second, parameters: {matchLabels: {n: "1"}}}
- {type: label-selector-filter, name: third, parameters: {matchLabels: {n: "2"}}}
- {type: label-selector-filter, name: fourth, parameters: {matchLabels: {n: "3"}}}
- {type: always-disagg-pd-decider, name: always}
- {type: max-score-picker}
- {type: disagg-profile-handler, parameters: PARAMETERS}
schedulingProfiles:
- {name: decode, plugins: [{pluginRef: first}, {pluginRef: max-score-picker}]}
- {name: prefill, plugins: [{pluginRef: second}, {pluginRef: max-score-picker}]}
- {name: fast-decode, plugins: [{pluginRef: third}, {pluginRef: max-score-picker}]}
- {name: fast-prefill, plugins: [{pluginRef: fourth}, {pluginRef: max-score-picker}]}
"""


def disaggregation(raw: Raw) -> object:
    table = pool(4, labels=[{"n": str(i)} for i in range(4)])
    text = DISAGG_CONFIG.replace("PARAMETERS", repr(dict(raw)).replace("'", '"'))
    scheduler = build_scheduler(load_config_text(text, "t"), table)
    result = scheduler.schedule(request(), table, table.live_slots())
    return result.primary_profile, int(result.primary[0]), result.prefill_profile, dict(result.headers)


def session(raw: Raw) -> object:
    table = pool(2)
    scorer = make(SessionAffinityScorer, raw)
    now = [0.0]
    scorer.clock = lambda: now[0]

    def step(at: float, headers: Mapping[str, str], slot: int) -> tuple[float, ...]:
        now[0] = at
        cycle = state(table, headers)
        scores = rounded(scorer.score(cycle, slots(0, 1)))
        scorer.pre_request(cycle, picked(slot))
        return scores

    return (
        step(0.0, {"x-session-id": "s1", "x-user": "u1"}, 0),
        step(12.0, {"x-session-id": "s2"}, 1),
        step(13.0, {"x-session-id": "s1"}, 1),  # s1 is bound to endpoint 0 unless its binding was swept
        step(14.0, {"x-session-id": "s2", "x-user": "u1"}, 1),  # which header names the session
    )


def ttft_producer(raw: Raw) -> object:
    producer = make(PredictedTTFTProducer, raw)
    producer.bind(pool(2))
    x = ttft_features(0.0, 1000.0, 0.0)
    seen = [producer.model.predict(0, x)]
    for i in range(12):  # endpoint 0 answers slowly, two seconds apart
        producer.model.learn(0, x, 0.5, 1.0 + 2.0 * i)
    seen += [producer.model.predict(0, x), producer.model.predict(1, x)]
    return rounded(seen)


def ttft_scorer(raw: Raw) -> object:
    table = pool(3)
    producer = make(PredictedTTFTProducer)
    producer.bind(table)
    producer.decode.set_slowness(0, 10.0)  # endpoint 0 decodes ten times slower
    scorer = make(PredictedTTFTScorer, raw)
    scorer.connect({"producer": producer})
    candidates = slots(0, 1, 2)
    cycle = state(table)
    zeros = np.zeros(3)
    busy = np.array([2.5, 1.0, 1.2])  # all of it queueing; endpoint 0 holds the whole prefix
    cycle.write(
        KEY,
        Prediction(
            candidates, busy, zeros, zeros, zeros, np.array([1.0, 0, 0]), zeros, busy, 64.0, zeros, 0.0, None, None
        ),
    )
    return rounded(scorer.score(cycle, candidates))


def metrics_source(raw: Raw) -> object:
    source = make(MetricsDataSource, raw).parameters
    assert isinstance(source, MetricsDataSourceParams)
    tls = scrape_tls_context(source)
    return scrape_url(source, Endpoint("10.0.0.1", 8000)), None if tls is None else (
        tls.check_hostname,
        tls.verify_mode,
    )


ENGINE_TYPE = "inference.networking.k8s.io/engine-type"


def metrics_extractor(raw: Raw) -> object:
    extractor = make(CoreMetricsExtractor, raw).parameters
    assert isinstance(extractor, CoreMetricsExtractorParams)
    pods = ({}, {ENGINE_TYPE: "sglang"}, {"engine": "sglang"}, {ENGINE_TYPE: "mine"})
    return tuple(extractor.engine(labels).name for labels in pods)


PARAMETERS: dict[str, Changes | Refused] = {
    "active-request-scorer.idleThreshold": Changes(1, active_requests),
    "active-request-scorer.maxBusyScore": Changes(0.5, active_requests),
    "active-request-scorer.requestTimeout": Refused("5m", "not configurable here"),
    "approx-prefix-cache-producer.autoTune": Changes(False, prefix_producer),
    "approx-prefix-cache-producer.blockSizeTokens": Changes(64, prefix_producer, {"autoTune": False}),
    "approx-prefix-cache-producer.maxPrefixBlocksToMatch": Changes(8, prefix_producer),
    "approx-prefix-cache-producer.maxPrefixTokensToMatch": Changes(128, prefix_producer),
    "approx-prefix-cache-producer.lruCapacityPerServer": Changes(4, prefix_producer, {"autoTune": False}),
    "by-label-selector.matchLabels": Changes({"role": "decode"}, label_selection(LabelSelectorFilter)),
    "by-label-selector.matchExpressions": Changes(
        [{"key": "role", "operator": "Exists"}], label_selection(LabelSelectorFilter)
    ),
    "label-selector-filter.matchLabels": Changes({"zone": "a"}, label_selection(LabelSelectorFilter)),
    "label-selector-filter.matchExpressions": Changes(
        [{"key": "role", "operator": "NotIn", "values": ["prefill"]}], label_selection(LabelSelectorFilter)
    ),
    "metrics-data-source.scheme": Changes("https", metrics_source),
    "metrics-data-source.path": Changes("/stats", metrics_source),
    "metrics-data-source.insecureSkipVerify": Changes(False, metrics_source, {"scheme": "https"}),
    "core-metrics-extractor.engineLabelKey": Changes("engine", metrics_extractor),
    "core-metrics-extractor.defaultEngine": Changes("sglang", metrics_extractor),
    "core-metrics-extractor.engineConfigs": Changes(
        [{"name": "mine", "queuedRequestsSpec": "mine_waiting", "runningRequestsSpec": "mine_running"}],
        metrics_extractor,
    ),
    "concurrency-detector.concurrencyMode": Changes("tokens", concurrency),
    "concurrency-detector.maxConcurrency": Changes(60, concurrency),
    "concurrency-detector.maxTokenConcurrency": Changes(600_000, concurrency, {"concurrencyMode": "tokens"}),
    "concurrency-detector.headroom": Changes(0.5, concurrency),
    "disagg-profile-handler.profiles": Changes(
        {"decode": "fast-decode", "prefill": "fast-prefill"}, disaggregation, {"deciders": {"prefill": "always"}}
    ),
    "disagg-profile-handler.deciders": Changes({"prefill": "always"}, disaggregation),
    "disagg-profile-handler.decodeProfile": Changes("fast-decode", disaggregation),
    "disagg-profile-handler.prefillProfile": Changes("fast-prefill", disaggregation, {"deciderPluginName": "always"}),
    "disagg-profile-handler.prefillDeciderPluginName": Changes("always", disaggregation),
    "disagg-profile-handler.deciderPluginName": Changes("always", disaggregation),
    "load-aware-scorer.threshold": Changes(64, queue_load),
    "max-score-picker.maxNumOfEndpoints": Changes(2, picks(MaxScorePicker)),
    "random-picker.maxNumOfEndpoints": Changes(3, picks(RandomPicker)),
    "weighted-random-picker.maxNumOfEndpoints": Changes(2, picks(WeightedRandomPicker)),
    "no-hit-lru-scorer.lruSize": Changes(1, no_hit_lru),
    # the reference names the prefix plugin whose match is read; here it is always the config's one producer
    "no-hit-lru-scorer.prefixPluginType": Refused("session-affinity-scorer", "approx-prefix-cache-producer"),
    "no-hit-lru-scorer.prefixPluginName": Refused("my-prefix-producer", "omit prefixPluginName"),
    "predicted-ttft-producer.prefillTokensPerSecond": Changes(4000.0, ttft_producer),
    "predicted-ttft-producer.baseSeconds": Changes(0.2, ttft_producer),
    "predicted-ttft-producer.driftPerSecond": Changes(1.0, ttft_producer),
    "predicted-ttft-producer.observationNoise": Changes(1.0, ttft_producer),
    "predicted-ttft-producer.slownessRate": Changes(0.5, ttft_producer),
    "predicted-ttft-scorer.prefixAffinity": Changes(0.0, ttft_scorer),
    "predicted-ttft-scorer.decodeWeight": Changes(1.0, ttft_scorer),
    "prefix-based-pd-decider.nonCachedTokens": Changes(500, pd_decider),
    "prefix-based-pd-decider.promptTokens": Changes(200, pd_decider, {"nonCachedTokens": 50}),
    "prefix-cache-affinity-filter.affinityThreshold": Changes(0.1, prefix_affinity_filter),
    "prefix-cache-affinity-filter.explorationProbability": Changes(0.5, prefix_affinity_filter),
    "prefix-cache-affinity-filter.maxTTFTPenaltyMs": Refused(1000.0, "not configurable here"),
    "prefix-cache-affinity-filter.maxTokensInFlightPenalty": Changes(500, prefix_affinity_filter),
    "session-affinity-scorer.strategy": Changes("session_id", session),
    "session-affinity-scorer.sessionIdConfig.sources": Changes(
        {"sources": [{"header": "x-user"}, {"header": "x-session-id"}]}, session, {"strategy": "session_id"}
    ),
    "session-affinity-scorer.sessionIdConfig.evictionTtlSeconds": Changes(
        {"evictionTtlSeconds": 5}, session, {"strategy": "session_id"}
    ),
    "session-affinity-scorer.sessionIdConfig.evictionSweepSeconds": Changes(
        {"evictionTtlSeconds": 5, "evictionSweepSeconds": 30},
        session,
        {"strategy": "session_id", "sessionIdConfig": {"evictionTtlSeconds": 5}},
    ),
    "token-load-scorer.queueThresholdTokens": Changes(2_000_000, token_load),
    "utilization-detector.queueDepthThreshold": Changes(10, utilization),
    "utilization-detector.kvCacheUtilThreshold": Changes(0.9, utilization),
    "utilization-detector.metricsStalenessThreshold": Changes("1s", utilization),
    "utilization-detector.headroom": Changes(0.25, utilization),
}
#: parameters holding a mapping of fields, each with rows of its own
NESTED = {"session-affinity-scorer.sessionIdConfig": ("sources", "evictionTtlSeconds", "evictionSweepSeconds")}


def accepted_keys(cls: type[Plugin]) -> list[str]:
    """The keys `cls` accepts, as its own parser lists them when given one it does not know."""
    with pytest.raises(ParameterError) as refused:
        cls.parse_parameters({"thisIsNoParameter": 1}, "p")
    listed = re.search(r"(?:unknown parameter of [\w-]+; known:|unknown key; valid keys are) (.*)$", str(refused.value))
    assert listed, f"{cls.type_name}: an unknown parameter must be refused listing the known ones: {refused.value}"
    return [] if listed.group(1) == "none" else listed.group(1).split(", ")


def declared() -> list[str]:
    rows = []
    for type_name, cls in sorted(plugin_types().items()):
        for key in accepted_keys(cls):
            name = f"{type_name}.{key}"
            rows += [f"{name}.{inner}" for inner in NESTED[name]] if name in NESTED else [name]
    return rows


def build(row: str, raw: Raw) -> Plugin:
    type_name = row.split(".")[0]
    return make(plugin_types()[type_name], raw)


def given(row: str, value: object, base: Raw) -> dict[str, Any]:
    """`base` with the row's parameter set to `value` (a nested field merges into its parameter's mapping)."""
    _, key, *inner = row.split(".")
    raw = dict(base)
    if inner:
        assert isinstance(value, Mapping)
        raw[key] = {**raw.get(key, {}), **value}
    else:
        raw[key] = value
    return raw


def test_every_plugin_parameter_has_a_row() -> None:
    rows, accepted = set(PARAMETERS), set(declared())
    assert len(accepted) > 40
    assert not accepted - rows, f"add a row (Changes or Refused) to PARAMETERS for: {sorted(accepted - rows)}"
    assert not rows - accepted, f"rows for parameters no plugin accepts: {sorted(rows - accepted)}"


@pytest.mark.parametrize("row", sorted(r for r, e in PARAMETERS.items() if isinstance(e, Changes)))
def test_a_changed_parameter_changes_what_the_plugin_does(row: str) -> None:
    effect = PARAMETERS[row]
    assert isinstance(effect, Changes)
    before = effect.observe(effect.base)
    after = effect.observe(given(row, effect.value, effect.base))
    assert before != after, f"{row}={effect.value!r} is accepted and changes nothing: {before}"


@pytest.mark.parametrize("row", sorted(r for r, e in PARAMETERS.items() if isinstance(e, Refused)))
def test_a_parameter_this_build_cannot_honour_is_refused_naming_itself(row: str) -> None:
    refusal = PARAMETERS[row]
    assert isinstance(refusal, Refused)
    key = row.split(".")[1]
    with pytest.raises(ParameterError, match=re.escape(key)) as refused:
        build(row, {key: refusal.value})
    assert refusal.says in str(refused.value)
