"""Predicted time to first token: the `predicted-ttft-producer` and the `predicted-ttft-scorer`.

For each candidate the producer predicts how long this request would wait for its first token there:

    TTFT = base + per_decode · decoding / 100 + per_prefill · (queued prefill + own uncached prefill) / 10,000
           + per_request · waiting / 10

- queued prefill: the uncached prompt tokens of the requests this EPP sent to the endpoint that have not
  produced their first token yet (exact and never stale: charged at the pick, released at the first chunk);
- own uncached prefill: this request's prompt tokens minus those the endpoint holds (the approximate prefix
  index's match), so a warm endpoint is priced by what it saves, not by a weight;
- decoding: requests on the endpoint that are past their first token (their decode tokens share each step);
- waiting: the requests behind the queued prefill (a full KV cache or batch admits them one by one as others
  finish, whatever their length).

The four coefficients are the pool's, learned online from what the EPP observes: the time from the pick to
the first streamed chunk, and the prompt and cached token counts the server reports in `usage` (see
FleetModel). A per-endpoint slowness factor multiplies them; it is learned only with slownessRate > 0
(default 0: a slower or degraded server is priced by its own queue, which drains slower). Each endpoint's
miss factor (prompt tokens it really computed over those the index expected) scales the uncached part;
requests the server reports waiting beyond this EPP's own count as typical prompts. Prompt tokens are
estimated from bytes with a ratio learned from the same `usage` reports.

The producer also prices what a pick costs other requests: the prefill the engine would spend recomputing
requests it preempts if this one outgrew the endpoint's KV cache (`overflow`), and which part of the prompt
is a common prefix that every endpoint should hold (`common`, `lift`; see plugins/prefix_demand.py).

The scorer turns predictions into scores in (0, 1]: fastest / predicted, so the fastest candidate scores 1.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from epp.datastore.table import Endpoint, EndpointTable, SlotArray
from epp.observability.extension import record_ttft_prediction
from epp.plugins.prefix import STATE_KEY as PREFIX_KEY
from epp.plugins.prefix import ApproxPrefixCacheProducer
from epp.plugins.prefix_demand import PrefixDemand
from epp.scheduling.plugin import CycleState, DataProducer, Plugin, Scorer, Scores
from epp.scheduling.types import LLMRequest, SchedulingResult, StateKey, Usage

KEY: StateKey[Prediction] = StateKey("predicted-ttft")
DECODE_UNIT = 100.0
PREFILL_UNIT = 10_000.0
REQUEST_UNIT = 10.0
#: the share of predicted TTFT spent queueing past which prefix affinity starts to count (fully at 1); 0.5 let
#: groups spread over three endpoints each at twice a prefix-heavy pool's capacity (its p90 4x the blend's)
PRESSURE_ONSET = 0.2
#: the least pressure affinity counts with, so a group stays together while queues are short too (it was 0 while
#: one popular system prompt would pile onto its first holders; such a prefix is common now and pulls nowhere)
AFFINITY_FLOOR = 0.1
#: an endpoint's slowness moves by this fraction of the log-ratio observed/predicted per response (the
#: decode model's rate; the TTFT model's is the producer's slownessRate) ...
SLOWNESS_RATE = 0.2
#: ... of a log-ratio clipped to this (one response moves it by at most a factor e^(0.2 x 1.5) = 1.35)
SLOWNESS_STEP = 1.5
#: every this many responses, endpoints quiet for QUIET_SECONDS move halfway back to the fleet's median slowness
RELAX_EVERY = 32
QUIET_SECONDS = 5.0
#: responses after which an endpoint's own slowness starts to move (the fleet's fit settles first)
WARMUP_OBSERVATIONS = 5


@dataclass
class PredictedTTFTParameters:
    #: starting prefill rate of an endpoint nothing has been learned about (the reference's
    #: peakPrefillThroughput default)
    prefill_tokens_per_second: float = 15_928.0
    #: starting fixed part of a TTFT (one engine step and the network), seconds
    base_seconds: float = 0.02
    #: how fast the coefficients may drift, as a fraction of their starting value per second without news
    drift_per_second: float = 0.1
    #: an observation's noise, as a fraction of the observed TTFT
    observation_noise: float = 0.15
    #: how fast an endpoint's own slowness factor follows its observed / predicted ratio (0 = not learned: an
    #: endpoint's speed is then priced by its own queue alone, which drains slower on a slower GPU)
    slowness_rate: float = 0.0

    def validate(self) -> None:
        if self.prefill_tokens_per_second <= 0:
            raise ValueError(f"prefillTokensPerSecond must be positive, got {self.prefill_tokens_per_second}")
        if self.base_seconds < 0:
            raise ValueError(f"baseSeconds must be >= 0, got {self.base_seconds}")
        if not 0 < self.drift_per_second <= 1:
            raise ValueError(f"driftPerSecond must be in (0, 1], got {self.drift_per_second}")
        if not 0 < self.observation_noise <= 1:
            raise ValueError(f"observationNoise must be in (0, 1], got {self.observation_noise}")
        if not 0 <= self.slowness_rate <= 1:
            raise ValueError(f"slownessRate must be in [0, 1], got {self.slowness_rate}")


@dataclass(frozen=True, slots=True)
class Prediction:
    """Predicted TTFT (seconds) and this request's uncached prompt tokens per candidate, aligned."""

    candidates: SlotArray
    seconds: npt.NDArray[np.float64]
    uncached: npt.NDArray[np.float64]
    queued: npt.NDArray[np.float64]
    decoding: npt.NDArray[np.float64]
    #: the fraction of the request's prefix blocks each candidate holds
    held: npt.NDArray[np.float64]
    #: requests this EPP sent there that have not produced their first token
    waiting: npt.NDArray[np.float64]
    #: the part of `seconds` spent behind the queue (the rest is this request's own prefill and one step)
    queueing: npt.NDArray[np.float64]
    #: output tokens this request is expected to generate (its max_tokens, at most the mean seen so far)
    output_tokens: float
    #: seconds per uncached prompt token on each candidate
    per_token: npt.NDArray[np.float64]
    #: the fraction of the request's blocks that is a common prefix (see PrefixDemand): no candidate is preferred
    #: for holding it ...
    common: float
    #: ... nor charged for lacking it: seconds to take off each candidate's prediction when scoring (None: none)
    lift: npt.NDArray[np.float64] | None
    #: seconds of recomputation this request would cause there by outgrowing the KV cache (not part of its own
    #: TTFT: the engine preempts running requests and computes their context again)
    overflow: npt.NDArray[np.float64] | None

    def at(self, candidates: SlotArray, values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """`values` (aligned with the producer's candidates) for `candidates`, a sorted subset of them."""
        if candidates is self.candidates:
            return values
        return values[np.searchsorted(self.candidates, candidates)]


class _Note:
    """What one pick charged and predicted, kept on the result until the response ends."""

    __slots__ = (
        "decoding",
        "epoch",
        "first_at",
        "kv_need",
        "kv_released",
        "predicted",
        "prompt_bytes",
        "queued",
        "released",
        "slot",
        "ttft",
        "uncached",
        "waiting",
    )

    def __init__(
        self,
        slot: int,
        epoch: float,
        uncached: float,
        queued: float,
        decoding: float,
        waiting: float,
        predicted: float,
        size: int,
        kv_need: float,
    ) -> None:
        self.slot = slot
        self.epoch = epoch
        self.uncached = uncached
        self.queued = queued
        self.decoding = decoding
        self.waiting = waiting
        self.predicted = predicted
        self.prompt_bytes = size
        self.released = False
        self.kv_need = kv_need
        self.kv_released = False
        self.ttft: float | None = None
        self.first_at = 0.0


class FleetModel:
    """seconds = slowness[endpoint] x (coefficients · features): coefficients shared by the fleet, a slowness
    factor per endpoint.

    The coefficients say how an engine of this pool turns load into waiting time; they are learned from every
    endpoint's observations (a Kalman filter over the observations divided by their endpoint's slowness; an
    observation's error is clipped to three of its expected standard deviations, so one stalled stream cannot
    throw the fit). Each endpoint's slowness (1 = as the fleet's coefficients say) follows the ratio of what it
    did to what the fleet's coefficients predicted, as an exponentially weighted mean in log space, bounded per
    step: a GPU half as fast settles near 2 within a few responses, a server that degrades mid-run follows
    within seconds, and no single observation moves it by more than a factor of e^(SLOWNESS_RATE x
    SLOWNESS_STEP).
    """

    def __init__(
        self,
        capacity: int,
        prior: tuple[float, ...],
        doubt: tuple[float, ...],
        floors: tuple[float, ...],
        drift_per_second: float,
        noise: float,
        slowness_rate: float = SLOWNESS_RATE,
    ) -> None:
        n = self.features_count = len(prior)
        self.slowness_rate = slowness_rate
        self.prior = prior
        self.coefficients = list(prior)
        self.covariance = [doubt[i] ** 2 if i == j else 0.0 for i in range(n) for j in range(n)]
        self.drift = [(drift_per_second * d) ** 2 for d in doubt]
        self.max_variance = [(10 * d) ** 2 for d in doubt]
        self.floors = floors
        self.noise = noise
        self.updated = 0.0
        self.slowness = np.ones(capacity)
        self.observations = np.zeros(capacity)
        #: when each endpoint last taught the model (0 = never)
        self.last_seen = np.zeros(capacity)
        self._learned = 0

    def reset(self, slot: int) -> None:
        """A new endpoint in `slot`: the fleet's median slowness."""
        learned = self.observations > 0
        learned[slot] = False
        self.slowness[slot] = float(np.median(self.slowness[learned])) if learned.any() else 1.0
        self.observations[slot] = 0.0
        self.last_seen[slot] = 0.0

    def fleet_prediction(self, x: Sequence[float]) -> float:
        return sum(c * v for c, v in zip(self.coefficients, x, strict=True))

    def predict(self, slot: int, x: Sequence[float]) -> float:
        return float(self.slowness[slot]) * self.fleet_prediction(x)

    def learn(self, slot: int, x: Sequence[float], seconds: float, now: float) -> None:
        slowness = float(self.slowness[slot])
        fleet = max(self.fleet_prediction(x), 1e-4)
        if self.slowness_rate > 0 and (
            self.observations[slot] >= WARMUP_OBSERVATIONS or self.observations.sum() >= 4 * WARMUP_OBSERVATIONS
        ):
            step = math.log(max(seconds, 1e-6) / (slowness * fleet))
            step = min(max(step, -SLOWNESS_STEP), SLOWNESS_STEP)
            self.slowness[slot] = min(max(slowness * math.exp(self.slowness_rate * step), 0.05), 50.0)
        self.observations[slot] += 1
        self.last_seen[slot] = now
        self._learned += 1
        if self.slowness_rate > 0 and self._learned % RELAX_EVERY == 0:
            self._relax(now)
        self._fit(x, seconds / slowness, now)

    def _relax(self, now: float) -> None:
        """An endpoint that has not answered for a while (one judged slow gets no traffic) moves halfway back to
        the fleet's median slowness: it gets a request again, and that request shows whether it recovered."""
        learned = self.observations > 0
        quiet = learned & (self.last_seen < now - QUIET_SECONDS)
        if quiet.any() and learned.sum() > quiet.sum():
            median = float(np.median(self.slowness[learned & ~quiet]))
            self.slowness[quiet] = np.sqrt(self.slowness[quiet] * median)
            self.last_seen[quiet] = now

    def _fit(self, x: Sequence[float], y: float, now: float) -> None:
        n = self.features_count
        c = self.covariance
        elapsed = min(now - self.updated, 600.0) if self.updated > 0 else 0.0
        self.updated = now
        for i in range(n):  # the coefficients may drift (a new model version, another traffic mix)
            c[i * n + i] = min(c[i * n + i] + self.drift[i] * max(elapsed, 0.01), self.max_variance[i])
        theta = self.coefficients
        px = [sum(c[i * n + j] * x[j] for j in range(n)) for i in range(n)]
        variance = sum(x[i] * px[i] for i in range(n)) + (self.noise * y) ** 2 + 1e-8
        error = y - sum(theta[i] * x[i] for i in range(n))
        limit = 3.0 * math.sqrt(variance)
        error = min(max(error, -limit), limit)
        gain = [v / variance for v in px]
        for i in range(n):
            theta[i] = max(theta[i] + gain[i] * error, self.floors[i])
        for i in range(n):
            for j in range(n):
                c[i * n + j] -= gain[i] * px[j]
        for i in range(n):  # keep it a covariance despite rounding: positive variances, |correlation| <= 1
            c[i * n + i] = max(c[i * n + i], 1e-12)
        for i in range(n):
            for j in range(i + 1, n):
                bound = math.sqrt(c[i * n + i] * c[j * n + j])
                value = min(max(0.5 * (c[i * n + j] + c[j * n + i]), -bound), bound)
                c[i * n + j] = c[j * n + i] = value


def ttft_model(capacity: int, parameters: PredictedTTFTParameters) -> FleetModel:
    """TTFT = slowness x (base + per_decode x decoding/100 + per_prefill x work/10,000 + per_request x waiting/10)."""
    base = parameters.base_seconds
    per_prefill = PREFILL_UNIT / parameters.prefill_tokens_per_second
    return FleetModel(
        capacity,
        prior=(base, base / 2, per_prefill, 0.0),
        doubt=(base, base / 2, per_prefill, base),  # per_request starts at 0 but may grow to a base per request
        floors=(0.0, 0.0, per_prefill / 100, 0.0),
        drift_per_second=parameters.drift_per_second,
        noise=parameters.observation_noise,
        slowness_rate=parameters.slowness_rate,
    )


def ttft_features(decoding: float, work: float, waiting: float) -> tuple[float, float, float, float]:
    return (1.0, decoding / DECODE_UNIT, work / PREFILL_UNIT, waiting / REQUEST_UNIT)


def decode_model(capacity: int, parameters: PredictedTTFTParameters) -> FleetModel:
    """Time per output token = slowness x (step + per_decode x decoding/100): one engine step, longer as the batch
    grows (the weights are read once per step; every request's KV is read too)."""
    step = parameters.base_seconds
    return FleetModel(
        capacity,
        prior=(step, step / 2),
        doubt=(step, step),
        floors=(step / 100, 0.0),
        drift_per_second=parameters.drift_per_second,
        noise=parameters.observation_noise,
    )


class PredictedTTFTProducer(DataProducer):
    type_name = "predicted-ttft-producer"
    Parameters = PredictedTTFTParameters
    consumes = ApproxPrefixCacheProducer.type_name

    def __init__(self, name: str, parameters: PredictedTTFTParameters) -> None:
        super().__init__(name, parameters)
        self.parameters: PredictedTTFTParameters = parameters
        self._note_key: StateKey[_Note] = StateKey(name)
        self.model = ttft_model(0, parameters)
        self.decode = decode_model(0, parameters)
        #: output tokens a request without max_tokens is expected to generate, and prompt tokens of a typical
        #: request (both learned from usage)
        self.output_tokens = 256.0
        self.prompt_tokens = 1024.0
        self.queued_tokens = np.zeros(0)
        self.queued_requests = np.zeros(0)
        self.demand = PrefixDemand()
        #: KV tokens the requests this EPP sent to each endpoint will hold until they end (uncached prompt plus
        #: expected output each), charged at the pick and released when the response ends
        self.kv_tokens = np.zeros(0)
        #: per endpoint, prompt tokens it really computed over those the prefix index expected (>= 1 when it
        #: evicts what the index still believes it holds), learned from usage.cached_tokens
        self.miss_factor = np.ones(0)
        #: whether any endpoint's miss factor is above 1
        self.misses = False
        #: whether a scorer reads the decode prediction (predicted-ttft-scorer with decodeWeight > 0); the
        #: decode model and the output length are learned only then
        self.decode_used = False
        self.table: EndpointTable | None = None
        #: prompt bytes per prompt token, learned from usage reports
        self.bytes_per_token = 4.0
        self.clock = time.monotonic

    def bind(self, table: EndpointTable) -> None:
        self.table = table
        self.model = ttft_model(table.capacity, self.parameters)
        self.decode = decode_model(table.capacity, self.parameters)
        self.queued_tokens = np.zeros(table.capacity)
        self.queued_requests = np.zeros(table.capacity)
        self.kv_tokens = np.zeros(table.capacity)
        self.miss_factor = np.ones(table.capacity)

        def on_change(kind: str, slot: int, endpoint: Endpoint) -> None:
            if kind == "update":
                return
            self.queued_tokens[slot] = 0.0
            self.queued_requests[slot] = 0.0
            self.kv_tokens[slot] = 0.0
            self.miss_factor[slot] = 1.0
            if kind == "add":
                self.model.reset(slot)
                self.decode.reset(slot)

        table.subscribe(on_change)

    def shared_columns(self) -> dict[str, npt.NDArray[np.float64]]:
        """With --shared-state, other replicas' queued prefill at the same endpoint is added into these arrays
        (epp.shared.columns): charge and release only this replica's own, and never rebind them after bind()."""
        return {"queued-tokens": self.queued_tokens, "queued-requests": self.queued_requests}

    def produce(self, state: CycleState, candidates: SlotArray) -> None:
        model = self.model
        prompt_tokens = max(len(state.request.prompt_bytes) / self.bytes_per_token, 1.0)
        match = state.read(PREFIX_KEY)
        common_blocks = 0
        block_tokens = 0.0
        blocks = None
        if match is not None and match.total_blocks:
            blocks = match.matched_blocks(candidates)
            held = blocks / match.total_blocks
            hashes = match.known_hashes()
            self.demand.count(hashes, match.total_blocks)
            common_blocks = self.demand.common_blocks(hashes, blocks)
            if np.count_nonzero(blocks) * 2 >= len(blocks):  # at least half hold some of it: their median is common
                common_blocks = max(common_blocks, int(_median(blocks)))
            block_tokens = match.block_bytes / self.bytes_per_token
            uncached = np.multiply(blocks, -block_tokens, dtype=np.float64)
            uncached += prompt_tokens
            if self.misses:  # some endpoint computes more than the index expects: scale up, up to the prompt
                uncached *= self.miss_factor.take(candidates)
                np.clip(uncached, 1.0, prompt_tokens, out=uncached)
            else:
                np.maximum(uncached, 1.0, out=uncached)
        else:
            uncached = np.full(len(candidates), prompt_tokens)
            held = np.zeros(len(candidates))
        table = state.table
        base, per_decode, per_prefill, per_request = model.coefficients
        slowness = model.slowness.take(candidates)
        per_token = slowness * (per_prefill / PREFILL_UNIT)
        queued = self.queued_tokens.take(candidates)
        waiting = self.queued_requests.take(candidates)
        decoding = table.inflight_requests.take(candidates)
        decoding -= waiting
        np.maximum(decoding, 0.0, out=decoding)
        # requests the server reported waiting beyond all this EPP had in flight there at that scrape (another
        # replica's, or sent around the EPP): their size is unknown, so each counts as a typical prompt, uncached
        external = table.waiting_queue.take(candidates)
        external -= table.scrape_inflight_requests.take(candidates)
        if external.max() > 0:
            np.maximum(external, 0.0, out=external)
            waiting = waiting + external
            queued = queued + external * self.prompt_tokens
        queueing = queued * (per_prefill / PREFILL_UNIT)
        if per_request:
            queueing += waiting * (per_request / REQUEST_UNIT)
        queueing *= slowness
        seconds = uncached * (per_prefill / PREFILL_UNIT)
        seconds += base
        if per_decode:
            seconds += decoding * (per_decode / DECODE_UNIT)
        seconds *= slowness
        seconds += queueing
        limit = _max_tokens(state.request)
        output = min(limit, self.output_tokens) if limit else self.output_tokens
        overflow = self._overflow(table, candidates, uncached, output, per_token)
        lift = None
        common = 0.0
        if common_blocks and match is not None and blocks is not None:
            common = common_blocks / match.total_blocks
            short = np.maximum(common_blocks - blocks, 0) * block_tokens
            if short.max() > 0:
                if self.misses:
                    short *= self.miss_factor.take(candidates)
                lift = np.minimum(short, uncached - 1.0)
                np.maximum(lift, 0.0, out=lift)
                lift *= per_token
        prediction = Prediction(
            candidates,
            seconds,
            uncached,
            queued,
            decoding,
            held,
            waiting,
            queueing,
            output,
            per_token,
            common,
            lift,
            overflow,
        )
        state.write(KEY, prediction)

    def _overflow(
        self,
        table: EndpointTable,
        candidates: SlotArray,
        uncached: npt.NDArray[np.float64],
        output: float,
        per_token: npt.NDArray[np.float64],
    ) -> npt.NDArray[np.float64] | None:
        """Seconds of prefill the engine would spend recomputing preempted requests if this one went there: the
        part of its KV need (uncached prompt and expected output) beyond the endpoint's free KV once everything
        in flight has grown to its expected length. None while no candidate would overflow."""
        capacity = table.cache_num_blocks.take(candidates)
        capacity *= table.cache_block_size.take(candidates)
        held = self.kv_tokens.take(candidates)
        # what the server reports holding, when above this EPP's own projection (another replica's requests)
        np.maximum(held, table.kv_usage.take(candidates) * capacity, out=held)
        held += uncached
        held += output
        held -= capacity
        if capacity.min() <= 0 or held.max() <= 0:
            return None
        np.clip(held, 0.0, uncached + output, out=held)
        held *= per_token
        return held

    def _learn_misses(self, note: _Note, computed: float) -> None:
        """The endpoint computed `computed` prompt tokens where the index expected `note.uncached` (over the
        factor in force): move its factor a tenth of the way there in log space, within [1, 50]."""
        factor = float(self.miss_factor[note.slot])
        ratio = min(max((computed + 16.0) / (note.uncached / factor + 16.0), 0.25), 50.0)
        factor = min(max(factor * math.exp(0.1 * math.log(ratio / factor)), 1.0), 50.0)
        self.miss_factor[note.slot] = factor
        self.misses = self.misses or factor > 1.0

    def decode_seconds(self, state: CycleState, prediction: Prediction) -> npt.NDArray[np.float64]:
        """Predicted time from the first token to the last, per candidate: time per output token with one more
        request in the batch, times the request's max_tokens (or the mean output length seen so far)."""
        step, per_batch = self.decode.coefficients
        per_token = (prediction.decoding + 1.0) * (per_batch / DECODE_UNIT)
        per_token += step
        per_token *= self.decode.slowness.take(prediction.candidates)
        per_token *= _max_tokens(state.request) or self.output_tokens
        return per_token

    def picked(self, state: CycleState, result: SchedulingResult) -> None:
        prediction = state.read(KEY)
        if prediction is None:
            return
        slot = int(result.primary[0])
        candidates = prediction.candidates
        i = int(candidates.searchsorted(slot))  # candidates are sorted slots
        if i >= len(candidates) or candidates[i] != slot:
            return
        uncached = float(prediction.uncached[i])
        self.queued_tokens[slot] += uncached
        self.queued_requests[slot] += 1.0
        kv_need = uncached + prediction.output_tokens
        self.kv_tokens[slot] += kv_need
        note = _Note(
            slot,
            float(state.table.epoch[slot]),
            uncached,
            float(prediction.queued[i]),
            float(prediction.decoding[i]),
            float(prediction.waiting[i]),
            float(prediction.seconds[i]),
            len(state.request.prompt_bytes),
            kv_need,
        )
        result.remember(self._note_key, note)

    def _release(self, note: _Note) -> None:
        if note.released:
            return
        note.released = True
        table = self.table
        if table is None or table.epoch[note.slot] != note.epoch:
            return  # the endpoint left; its slot's queue was reset then
        slot = note.slot
        self.queued_tokens[slot] = max(self.queued_tokens[slot] - note.uncached, 0.0)
        self.queued_requests[slot] = max(self.queued_requests[slot] - 1.0, 0.0)

    def _release_kv(self, note: _Note) -> None:
        if note.kv_released:
            return
        note.kv_released = True
        table = self.table
        if table is not None and table.epoch[note.slot] == note.epoch:
            self.kv_tokens[note.slot] = max(self.kv_tokens[note.slot] - note.kv_need, 0.0)

    def first_response(self, request: LLMRequest, result: SchedulingResult, ttft: float | None) -> None:
        note = result.recall(self._note_key)
        if note is None:
            return
        self._release(note)
        note.ttft = ttft
        if ttft is not None and self.decode_used:
            note.first_at = self.clock()

    def response_complete(self, request: LLMRequest, result: SchedulingResult, usage: Usage | None) -> None:
        note = result.recall(self._note_key)
        if note is None:
            return
        self._release(note)
        self._release_kv(note)
        ttft = note.ttft
        table = self.table
        if ttft is None or ttft <= 0 or usage is None or usage.prompt_tokens <= 0 or table is None:
            return
        if note.prompt_bytes > 0:
            ratio = note.prompt_bytes / usage.prompt_tokens
            if 0.5 < ratio < 64:
                self.bytes_per_token += 0.05 * (ratio - self.bytes_per_token)
        record_ttft_prediction(abs(note.predicted - ttft) / ttft)
        if table.epoch[note.slot] != note.epoch:
            return
        own: float
        if usage.cached_reported:
            own = max(usage.prompt_tokens - usage.cached_tokens, 1)
            self._learn_misses(note, own)
        else:  # a server that does not say what it had cached: take the index's word for it
            own = max(note.uncached, 1.0)
        self.prompt_tokens += 0.05 * (usage.prompt_tokens - self.prompt_tokens)
        now = self.clock()
        self.model.learn(note.slot, ttft_features(note.decoding, note.queued + own, note.waiting), ttft, now)
        if usage.completion_tokens > 0:
            self.output_tokens += 0.05 * (usage.completion_tokens - self.output_tokens)
        if self.decode_used and usage.completion_tokens >= 2 and note.first_at > 0:
            per_token = (now - note.first_at) / (usage.completion_tokens - 1)
            self.decode.learn(note.slot, (1.0, (note.decoding + 1.0) / DECODE_UNIT), per_token, now)


@dataclass
class ScorerParameters:
    #: how much longer a warm endpoint may take under pressure: its predicted TTFT counts 1 + prefixAffinity x
    #: pressure x (the fraction of the prompt's blocks it holds beyond the coldest candidate) times less
    prefix_affinity: float = 8.0
    #: weight of the predicted decode time (time per output token x expected output tokens) added to the TTFT
    decode_weight: float = 0.0

    def validate(self) -> None:
        if self.prefix_affinity < 0:
            raise ValueError(f"prefixAffinity must be >= 0, got {self.prefix_affinity}")
        if self.decode_weight < 0:
            raise ValueError(f"decodeWeight must be >= 0, got {self.decode_weight}")


class PredictedTTFTScorer(Scorer):
    """fastest / this candidate's predicted TTFT (1 for the best, towards 0 for slower), plus the recomputation a
    KV overflow there would cause, minus what it would save by holding the common prefix it lacks; under
    pressure a warm candidate's prediction is divided by 1 + prefixAffinity x pressure x max(0, held - common).

    The prediction already prices what the prefix saves this request; the affinity also prices what a miss
    costs later ones: the copy it makes takes cache from other prefixes, and a prefix spread over several
    endpoints is evicted sooner from each. That matters once the pool is pressed: `pressure` is the share of
    the candidates' predicted TTFT spent queueing, mapped from [PRESSURE_ONSET, 1] to [0, 1], at least
    AFFINITY_FLOOR. An idle or lightly loaded pool routes almost on the prediction alone; an overloaded one
    keeps a group of requests where its prefix is until that endpoint is clearly slower (a ratio holds under
    overload, where a margin in seconds would not). Only what sets a candidate apart counts (held beyond the
    common prefix): a prefix most candidates hold, or that more traffic passes through than its holders can
    carry (one system prompt for all), pulls nowhere, and an endpoint that has not got it yet is not shut out
    for lacking it."""

    type_name = "predicted-ttft-scorer"
    Parameters = ScorerParameters
    bounded = True
    consumes = PredictedTTFTProducer.type_name

    def __init__(self, name: str, parameters: ScorerParameters) -> None:
        super().__init__(name, parameters)
        self.affinity = parameters.prefix_affinity
        self.decode_weight = parameters.decode_weight
        self.producer: PredictedTTFTProducer | None = None

    def connect(self, plugins: Mapping[str, Plugin]) -> None:
        """Find the producer whose decode model the decode term reads."""
        producers = [p for p in plugins.values() if isinstance(p, PredictedTTFTProducer)]
        self.producer = producers[0] if producers else None
        if self.producer is not None and self.decode_weight > 0:
            self.producer.decode_used = True

    def score(self, state: CycleState, candidates: SlotArray) -> Scores:
        prediction = state.read(KEY)
        if prediction is None:
            return np.ones(len(candidates))
        seconds = prediction.at(candidates, prediction.seconds)  # > 0: every prediction has a prefill term
        if prediction.overflow is not None:
            seconds = seconds + prediction.at(candidates, prediction.overflow)
        if prediction.lift is not None:
            seconds = seconds - prediction.at(candidates, prediction.lift)
        if self.decode_weight > 0 and self.producer is not None:
            decode = self.producer.decode_seconds(state, prediction)
            seconds = seconds + self.decode_weight * prediction.at(candidates, decode)
        if self.affinity > 0:
            # the pool's pressure: the share of the predicted TTFTs that is queueing (0 idle, towards 1 overloaded)
            pressure = float(prediction.queueing.sum()) / max(float(prediction.seconds.sum()), 1e-9)
            pressure = max((pressure - PRESSURE_ONSET) / (1.0 - PRESSURE_ONSET), AFFINITY_FLOOR)
            if pressure > 0:
                held = prediction.at(candidates, prediction.held)
                apart = np.maximum(held - prediction.common, 0.0)
                discount = 1.0 + (self.affinity * pressure) * apart
                seconds = seconds / discount
        result: Scores = seconds.min() / seconds
        return result


def _max_tokens(request: LLMRequest) -> float:
    body = request.body
    if body is None:
        return 0.0
    value = body.get("max_tokens") or body.get("max_completion_tokens") or body.get("max_output_tokens")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0.0


def _median(values: npt.NDArray[np.float64] | npt.NDArray[np.int64]) -> float:
    """np.median without its overhead (it sorts a copy through several layers of Python)."""
    n = len(values)
    middle = n // 2
    if n % 2:
        return float(np.partition(values, middle)[middle])
    low, high = np.partition(values, (middle - 1, middle))[middle - 1 : middle + 1]
    return float(low + high) / 2
