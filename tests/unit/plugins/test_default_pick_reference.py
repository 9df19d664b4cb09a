"""The built-in default's pick against a plain restatement of its formulas, one candidate at a time.

The producer and scorer are vectorised for speed (plugins/latency.py); here the same formulas are written out per
candidate with Python floats, in the order docs/plugins.md states them, and over 3,000 seeded random states
(endpoint loads, queued prefill and its drain, the engine step in progress, KV caches that overflow, prefix hits
and common prefixes, LoRA adapters, learned slowness, miss factors, endpoints short of their share of the picks)
the scheduler's total scores must equal the reference's to the bit and its pick must be one of the reference's
best. The prefix match and the common-prefix demand are inputs here (the prefix index and
plugins/prefix_demand.py have their own tests)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from epp.config.schema import default_config, load_config_text
from epp.datastore.table import Endpoint, EndpointTable
from epp.plugins.fleet_model import DECODE_UNIT, PREFILL_UNIT, REQUEST_UNIT
from epp.plugins.latency import PredictedTTFTProducer
from epp.plugins.latency_scorer import AFFINITY_FLOOR, PRESSURE_ONSET
from epp.plugins.pick_share import SHARE_FLOOR, STARVED_PULL, WARMUP_PER_ENDPOINT
from epp.plugins.prefill_drain import DRAIN_CAP, DRAIN_SHARE
from epp.plugins.prefix import STATE_KEY, ApproxPrefixCacheProducer, block_hashes
from epp.plugins.prefix_index import as_keys
from epp.plugins.step_phase import STEP_WINDOW
from epp.scheduling.framework import SchedulerRuntime, build_scheduler
from epp.scheduling.types import LLMRequest

MODEL = "base"
ADAPTERS = ("a1", "a2")
NOW = 1000.0
RECOMMENDED = Path(__file__).resolve().parents[3] / "config" / "recommended.yaml"


@dataclass
class Snapshot:
    """What the pick reads, copied before it."""

    queued: list[float]
    queued_requests: list[float]
    drained: list[float]
    updated_at: list[float]
    kv_tokens: list[float]
    miss_factor: list[float]
    slowness: list[float]
    coefficients: tuple[float, ...]
    misses: bool
    bytes_per_token: float
    prompt_tokens: float
    output_tokens: float
    recent_picks: list[float]
    picks: int
    window_ends: list[float]
    latest: float


def snapshot(producer: PredictedTTFTProducer) -> Snapshot:
    return Snapshot(
        producer.queued_tokens.tolist(),
        producer.queued_requests.tolist(),
        producer.drain.drained.tolist(),
        producer.drain.updated_at.tolist(),
        producer.kv_tokens.tolist(),
        producer.miss_factor.tolist(),
        producer.model.slowness.tolist(),
        tuple(producer.model.coefficients),
        producer.misses,
        producer.bytes_per_token,
        producer.prompt_tokens,
        producer.output_tokens,
        producer.share.recent.tolist(),
        producer.share.picks,
        producer.phase.window_ends.tolist(),
        producer.phase.latest,
    )


def reference_totals(
    table: EndpointTable,
    slots: list[int],
    request: LLMRequest,
    before: Snapshot,
    blocks: list[int],
    total_blocks: int,
    block_bytes: int,
    common_blocks: int,
) -> tuple[list[float], list[float]]:
    """(predicted-ttft-scorer + lora-affinity-scorer per candidate, drained tokens per candidate after the pick)."""
    prompt = max(len(request.prompt_bytes) / before.bytes_per_token, 1.0)
    block_tokens = block_bytes / before.bytes_per_token if total_blocks else 0.0
    base, per_decode, per_prefill, per_request, per_turnover, per_step = before.coefficients
    rate = per_prefill / PREFILL_UNIT
    any_queued = any(before.queued[s] != 0 for s in slots)
    any_external = max(table.waiting_queue[s] - table.scrape_inflight_requests[s] for s in slots) > 0
    body = request.body or {}
    limit = float(body.get("max_tokens", 0))  # type: ignore[arg-type]
    output = min(limit, before.output_tokens) if limit else before.output_tokens
    capacities = [float(table.cache_num_blocks[s] * table.cache_block_size[s]) for s in slots]
    needs = []  # per candidate: KV its requests in flight and this one need beyond its cache (plugins/kv_demand.py)
    for i, s in enumerate(slots):
        uncached = prompt
        if total_blocks:
            uncached = blocks[i] * -block_tokens + prompt
            scaled = min(max(uncached * before.miss_factor[s], 1.0), prompt)
            uncached = scaled if before.misses else max(uncached, 1.0)
        needs.append(max(before.kv_tokens[s], table.kv_usage[s] * capacities[i]) + uncached + output - capacities[i])
    overflows = min(capacities) > 0 and max(needs) > 0
    rows = []
    for i, s in enumerate(slots):
        slowness = before.slowness[s]
        per_token = slowness * rate
        if total_blocks:
            held = blocks[i] / total_blocks
            uncached = blocks[i] * -block_tokens + prompt
            scaled = min(max(uncached * before.miss_factor[s], 1.0), prompt)
            uncached = scaled if before.misses else max(uncached, 1.0)
        else:
            held, uncached = 0.0, prompt
        queued, waiting, drained = before.queued[s], before.queued_requests[s], before.drained[s]
        if any_queued:
            drained += (NOW - before.updated_at[s]) * DRAIN_SHARE / max(per_token, 1e-9)
            drained = min(drained, queued * DRAIN_CAP / max(waiting, 1.0))
            queued -= drained
        decoding = max(table.inflight_requests[s] - waiting, 0.0)
        if any_external:
            external = max(table.waiting_queue[s] - table.scrape_inflight_requests[s], 0.0)
            waiting += external
            queued += external * before.prompt_tokens
        queueing = queued * rate
        if per_request:
            queueing += waiting * (per_request / REQUEST_UNIT)
        kv = needs[i]
        if overflows:  # the cache turns over this many times before the request fits
            queueing += max(kv, 0.0) / capacities[i] * per_turnover
        if per_step and before.latest > NOW:  # the part of the step window since the endpoint's last chunk still
            # ahead, max(end - now, 0) x per_step / window, summed as (max(end, now) - now) x per_step / window with
            # the `now` part taken off with the base (the producer's order, for the same bits)
            step = per_step / STEP_WINDOW
            seconds = uncached * rate + (base - NOW * step)
            seconds += max(before.window_ends[s], NOW) * step
        else:
            seconds = uncached * rate + base
        if per_decode:
            seconds += decoding * (per_decode / DECODE_UNIT)
        queueing *= slowness
        seconds = seconds * slowness + queueing
        short = max(common_blocks - blocks[i], 0) * block_tokens if total_blocks else 0.0
        if before.misses:
            short *= before.miss_factor[s]
        rows.append((seconds, queueing, held, uncached, per_token, kv, short, drained))
    lifts = bool(common_blocks) and total_blocks > 0 and max(row[6] for row in rows) > 0
    common = common_blocks / total_blocks if common_blocks and total_blocks else 0.0
    pressure = float(np.sum([r[1] for r in rows])) / max(float(np.sum([r[0] for r in rows])), 1e-9)
    pressure = max((pressure - PRESSURE_ONSET) / (1.0 - PRESSURE_ONSET), AFFINITY_FLOOR)
    recent = [before.recent_picks[s] for s in slots]
    floor = max(recent) * SHARE_FLOOR
    starved = before.picks >= WARMUP_PER_ENDPOINT * len(slots) and floor > 0 and min(recent) < floor
    priced = []
    for (seconds, _, held, uncached, per_token, kv, short, _), picks in zip(rows, recent, strict=True):
        if overflows:
            seconds += min(max(kv, 0.0), uncached + output) * per_token
        if lifts:
            seconds -= max(min(short, uncached - 1.0), 0.0) * per_token
        seconds /= 1.0 + (8.0 * pressure) * max(held - common, 0.0)
        if starved:
            seconds /= STARVED_PULL * max((floor - picks) / max(picks, floor / 100), 0.0) + 1.0
        priced.append(seconds)
    fastest = min(priced)
    adapter = request.target_model
    totals = [fastest / seconds + lora_score(table, s, adapter) for s, seconds in zip(slots, priced, strict=True)]
    return totals, [row[7] for row in rows]


def lora_score(table: EndpointTable, slot: int, adapter: str) -> float:
    if table.lora_generation == 0:
        return 0.0
    if adapter in table.lora_active[slot]:
        return 1.0
    if table.lora_loaded[slot] < table.max_lora[slot]:
        return 0.8
    return 0.6 if adapter in table.lora_waiting[slot] else 0.0


class World:
    """One table and scheduler whose state is re-drawn before every checked pick."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        rng = self.rng
        count = int(rng.choice([1, 2, 3, 8, 24]))
        self.table = EndpointTable(count + 2)
        for i in range(count):
            self.table.add(Endpoint(f"10.0.0.{i + 1}", 8000))
        if count > 2 and rng.random() < 0.5:  # a hole in the slots
            self.table.remove("10.0.0.2:8000")
        config = default_config()
        self.adapters = seed % 3 == 0
        self.learns_slowness = seed % 2 == 1
        if self.learns_slowness:
            text = RECOMMENDED.read_text()
            line = "- type: predicted-ttft-producer"
            config = load_config_text(text.replace(line, line + "\n  parameters: {slownessRate: 0.2}"), "t")
        self.scheduler: SchedulerRuntime = build_scheduler(config, self.table)
        self.scheduler.trace = True
        producer = self.scheduler.plugins["predicted-ttft-producer"]
        prefix = self.scheduler.plugins["approx-prefix-cache-producer"]
        assert isinstance(producer, PredictedTTFTProducer) and isinstance(prefix, ApproxPrefixCacheProducer)
        self.producer, self.prefix = producer, prefix
        producer.clock = lambda: NOW
        self.prefixes = [bytes(rng.integers(97, 123, int(rng.integers(64, 1600))).astype(np.uint8)) for _ in range(3)]

    def draw(self) -> LLMRequest:
        """Random load, producer state and prefix holders; returns the request to pick for."""
        rng, table, producer = self.rng, self.table, self.producer
        slots = table.live_slots()
        n = len(slots)

        def some(high: float, share: float = 0.6) -> np.ndarray:
            return np.round(rng.random(n) * high) * (rng.random(n) < share)

        table.inflight_requests[slots] = some(12)
        table.scrape_inflight_requests[slots] = table.inflight_requests[slots] * (rng.random(n) < 0.5)
        table.waiting_queue[slots] = some(8, 0.3 if rng.random() < 0.5 else 0.0)
        table.kv_usage[slots] = rng.random(n)
        known = rng.random() < 0.6
        table.cache_num_blocks[slots] = rng.choice([40.0, 300.0, 9600.0], n) if known else 0.0
        table.cache_block_size[slots] = 16.0 if known else 0.0
        queued = some(6000, 0.5) if rng.random() < 0.8 else np.zeros(n)
        producer.queued_tokens[slots] = queued
        producer.queued_requests[slots] = np.where(queued > 0, np.ceil(rng.random(n) * 4), 0.0)
        producer.drain.drained[slots] = rng.random(n) * 500
        producer.drain.updated_at[slots] = NOW - rng.random(n) * 0.2
        producer.kv_tokens[slots] = some(20000)
        producer.misses = bool(rng.random() < 0.3)
        producer.miss_factor[slots] = 1.0 + rng.random(n) * 3 * producer.misses
        if self.learns_slowness and rng.random() < 0.3:
            producer.model.set_slowness(int(rng.choice(slots)), float(rng.uniform(0.5, 3.0)))
        producer.model.coefficients[3] = 0.0 if rng.random() < 0.5 else float(rng.uniform(0, 0.05))
        producer.model.coefficients[4] = 0.0 if rng.random() < 0.3 else float(rng.uniform(0, 5.0))
        producer.model.coefficients[5] = 0.0 if rng.random() < 0.2 else float(rng.uniform(0, 0.1))
        if rng.random() < 0.3:  # every endpoint's window has passed: the pick skips the arrays
            producer.phase.window_ends[slots] = NOW - rng.random(n) * STEP_WINDOW
        else:  # about half of them within their window
            producer.phase.window_ends[slots] = NOW + (rng.random(n) - 0.5) * 2 * STEP_WINDOW
        producer.phase.latest = float(producer.phase.window_ends.max())
        producer.bytes_per_token = float(rng.uniform(3.0, 5.0))
        producer.output_tokens = float(rng.uniform(20, 600))
        if rng.random() < 0.5:  # some endpoints short of their share of the picks
            producer.share.recent[slots] = rng.random(n) * 100 * (rng.random(n) < 0.8)
            producer.share.picks = int(rng.integers(0, 40 * n))
        if self.adapters and rng.random() < 0.3:
            for slot in slots.tolist():
                active = frozenset(a for a in ADAPTERS if rng.random() < 0.4)
                waiting = frozenset(a for a in ADAPTERS if rng.random() < 0.3)
                table.set_lora(slot, active, waiting, float(rng.integers(1, 3)))
        model = str(rng.choice(ADAPTERS)) if table.lora_generation and rng.random() < 0.8 else MODEL
        shared = self.prefixes[int(rng.integers(len(self.prefixes)))]
        keys = as_keys(block_hashes(shared, model.encode(), 64, 256))
        for slot in slots.tolist():  # some endpoints hold the shared prefix, or part of it
            if rng.random() < 0.4:
                self.prefix.index.insert(slot, keys[: int(rng.integers(1, len(keys) + 1))])
        for _ in range(int(rng.integers(0, 3 * n + 1))):  # traffic through it (common once popular enough)
            producer.demand.count(keys.tolist(), len(keys))
        tail = bytes(rng.integers(97, 123, int(rng.integers(0, 3000))).astype(np.uint8))
        body = {"max_tokens": int(rng.integers(1, 800))} if rng.random() < 0.5 else {}
        return LLMRequest("r", model, model, {}, prompt_bytes=shared + tail, body=body)


@pytest.mark.parametrize("seed", range(30))
def test_the_default_picks_what_its_formulas_pick(seed: int) -> None:
    world = World(seed)
    table, scheduler, producer = world.table, world.scheduler, world.producer
    for _ in range(100):
        request = world.draw()
        slots = table.live_slots()
        before = snapshot(producer)
        demand = copy.copy(producer.demand)
        demand.counts = dict(demand.counts)
        result = scheduler.schedule(request, table, slots)
        trace = result.profile_results[result.primary_profile].trace
        assert trace is not None and trace.total is not None and result.cycle_state is not None
        match = result.cycle_state.read(STATE_KEY)
        assert match is not None
        blocks = match.matched_blocks(slots).tolist()
        common = 0
        if match.total_blocks:
            demand.count(match.known_hashes(), match.total_blocks)
            common = demand.common_blocks(match.known_hashes(), match.matched_blocks(slots))
        expected, drained = reference_totals(
            table, slots.tolist(), request, before, blocks, match.total_blocks, match.block_bytes, common
        )
        assert trace.total.tolist() == expected
        picked = int(result.primary[0])
        best = max(expected)
        assert expected[slots.tolist().index(picked)] == best
        if any(before.queued[s] for s in slots.tolist()):  # the drain moved on for all but the pick (charged since)
            assert [producer.drain.drained[s] for s in slots.tolist() if s != picked] == [
                d for s, d in zip(slots.tolist(), drained, strict=True) if s != picked
            ]
        scheduler.pre_request(request, result, table)
