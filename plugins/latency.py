"""Predicted time to first token: the `predicted-ttft-producer` and the `predicted-ttft-scorer`.

For each candidate the producer predicts how long this request would wait for its first token there:

    TTFT = base + per_decode · decoding / 100 + per_prefill · (queued prefill + own uncached prefill) / 10,000
           + per_request · waiting / 10 + per_turnover · full + per_step · ahead

- queued prefill: the uncached prompt tokens of the requests this EPP sent to the endpoint that have not
  produced their first token yet (exact and never stale: charged at the pick, released at the first chunk),
  less the part of the head request's prefill the endpoint has probably computed since (plugins/prefill_drain.py);
- own uncached prefill: this request's prompt tokens minus those the endpoint holds (the approximate prefix index's
  match), so a warm endpoint is priced by what it saves, not by a weight;
- decoding: requests on the endpoint that are past their first token (their decode tokens share each step);
- waiting: the requests behind the queued prefill (a full KV cache or batch admits them one by one as others finish,
  whatever their length);
- full: how many times the endpoint's KV cache must turn over before this request fits (plugins/kv_demand.py);
- ahead: the part of the engine step in progress still to run, from its last response chunk (plugins/step_phase.py).

The six coefficients are the pool's, learned online from what the EPP observes: the time from the pick to the first
streamed chunk, learned at that chunk (see FleetModel), and the prompt and cached token counts the server reports in
`usage` at the end, which teach the bytes-per-token ratio and the miss factors. A per-endpoint slowness factor
multiplies them, learned from the same first chunks (slownessRate, default 0.1; 0 leaves a slower or degraded
server priced by its own queue alone). Each endpoint's miss factor (prompt tokens it really computed over those
the index expected) scales the uncached part; requests the server reports waiting beyond this EPP's own count as
typical prompts. Prompt tokens are estimated from bytes with a ratio learned from the same `usage` reports.

The producer also prices what a pick costs other requests: the prefill the engine would spend recomputing requests
it preempts if this one outgrew the endpoint's KV cache (`overflow`), and which part of the prompt is a common
prefix that every endpoint should hold (`common`, `lift`; see plugins/prefix_demand.py). The scorer
(plugins/latency_scorer.py) scores fastest / predicted; the model is plugins/fleet_model.py. Each endpoint's recent
share of the picks (plugins/pick_share.py) goes with the prediction, so that a slower endpoint is not starved.
"""

from __future__ import annotations

import math
import time

import numpy as np
import numpy.typing as npt

from epp.datastore.table import COLUMNS, Endpoint, EndpointTable, SlotArray
from epp.observability.extension import record_ttft_prediction
from epp.plugins.fleet_model import (
    DECODE_UNIT,
    PREFILL_UNIT,
    REQUEST_UNIT,
    PredictedTTFTParameters,
    decode_model,
    ttft_features,
    ttft_model,
)
from epp.plugins.kv_demand import kv_beyond_cache
from epp.plugins.pick_share import PickShare
from epp.plugins.prediction import Prediction
from epp.plugins.prefill_drain import QueuedPrefillDrain
from epp.plugins.prefix import STATE_KEY as PREFIX_KEY
from epp.plugins.prefix import ApproxPrefixCacheProducer
from epp.plugins.prefix_demand import PrefixDemand
from epp.plugins.step_phase import STEP_WINDOW, EngineStepPhase
from epp.plugins.ttft_note import PickNote, max_tokens
from epp.scheduling.plugin import CycleState, DataProducer
from epp.scheduling.types import LLMRequest, SchedulingResult, StateKey, Usage

KEY: StateKey[Prediction] = StateKey("predicted-ttft")
_ZERO, _ONE = np.array(0.0), np.array(1.0)  # 0-d: numpy need not convert a Python float operand on every call
#: rows of EndpointTable.rows the prediction reads, and how many leading rows one gather takes to get them all
_LOADS = [
    COLUMNS.index(name)
    for name in (
        "waiting_queue", "inflight_requests", "scrape_inflight_requests", "cache_num_blocks", "cache_block_size",
        "kv_usage",
    )
]  # fmt: skip
_WAITING, _INFLIGHT, _SCRAPE_INFLIGHT, _CACHE_BLOCKS, _BLOCK_SIZE, _KV_USAGE = _LOADS
_LOAD_ROWS = max(_LOADS) + 1


class PredictedTTFTProducer(DataProducer):
    type_name = "predicted-ttft-producer"
    Parameters = PredictedTTFTParameters
    consumes = ApproxPrefixCacheProducer.type_name

    def __init__(self, name: str, parameters: PredictedTTFTParameters) -> None:
        super().__init__(name, parameters)
        self.parameters: PredictedTTFTParameters = parameters
        self._note_key: StateKey[PickNote] = StateKey(name)
        self.model = ttft_model(0, parameters)
        self.decode = decode_model(0, parameters)
        #: output tokens a request without max_tokens is expected to generate, and prompt tokens of a typical
        #: request (both learned from usage)
        self.output_tokens = 256.0
        self.prompt_tokens = 1024.0
        self.queued_tokens = np.zeros(0)
        self.queued_requests = np.zeros(0)
        self.drain = QueuedPrefillDrain(0)
        self.demand = PrefixDemand()
        self.share = PickShare(0)
        self.phase = EngineStepPhase(0)
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
        self.drain = QueuedPrefillDrain(table.capacity)
        self.share = PickShare(table.capacity)
        self.phase = EngineStepPhase(table.capacity)
        self.kv_tokens = np.zeros(table.capacity)
        self.miss_factor = np.ones(table.capacity)

        def on_change(kind: str, slot: int, endpoint: Endpoint) -> None:
            if kind == "update":
                return
            self.queued_tokens[slot] = 0.0
            self.queued_requests[slot] = 0.0
            self.drain.reset(slot, self.clock())
            self.share.reset(slot)
            self.phase.reset(slot)
            self.kv_tokens[slot] = 0.0
            self.miss_factor[slot] = 1.0
            self.model.reset(slot)
            self.decode.reset(slot)

        table.subscribe(on_change)

    def shared_columns(self) -> dict[str, npt.NDArray[np.float64]]:
        """With --shared-state peers' values for the same endpoint are added into these (epp.shared.columns)."""
        model = self.model.shared_columns("slowness") if self.parameters.slowness_rate > 0 else {}
        decode = self.decode.shared_columns("decode-slowness") if self.decode_used else {}
        queue = {"queued-tokens": self.queued_tokens, "queued-requests": self.queued_requests}
        drain = {"prefilled-tokens": self.drain.prefilled, "picks": self.share.total}
        return {**queue, **drain, "kv-tokens": self.kv_tokens, **model, **decode}

    def peers_changed(self, slot: int) -> None:
        self.model.refresh(slot)
        self.decode.refresh(slot)
        self._advance_drain(slot)
        self.drain.peers_finished(slot)
        if self.table is not None:
            self.share.peers_picked(slot, len(self.table))

    def produce(self, state: CycleState, candidates: SlotArray) -> None:
        # numpy calls cost their overhead here, hence argmax/count_nonzero and 0-d constants (benchmarks/README.md)
        model = self.model
        prompt_tokens = max(len(state.request.prompt_bytes) / self.bytes_per_token, 1.0)
        match = state.read(PREFIX_KEY)
        common_blocks, fewest, deepest, block_tokens = 0, 0, 0, 0.0
        counts = None
        if match is not None and match.total_blocks:
            blocks = match.matched_blocks(candidates)
            counts = blocks.astype(np.float64)  # exact (small integers): no later operation mixes in int64
            held = counts / match.total_blocks
            common_blocks, fewest, deepest = self.demand.count_common(match.known_hashes(), match.total_blocks, blocks)
            block_tokens = match.block_bytes / self.bytes_per_token
            uncached = counts * -block_tokens
            uncached += prompt_tokens
            if self.misses:  # some endpoint computes more than the index expects: scale up, up to the prompt
                uncached *= self.miss_factor[candidates]
                np.maximum(uncached, _ONE, out=uncached)
                np.minimum(uncached, prompt_tokens, out=uncached)
            else:
                np.maximum(uncached, _ONE, out=uncached)
        else:
            uncached = np.full(len(candidates), prompt_tokens)
            held = np.zeros(len(candidates))
        table = state.table
        base, per_decode, per_prefill, per_request, per_turnover, per_step = model.coefficients
        prefill_rate = np.array(per_prefill / PREFILL_UNIT)
        # seconds per uncached prompt token: the same on every endpoint until some endpoint's slowness is not 1
        slowness = model.slowness[candidates] if model.varied else None
        per_token = float(prefill_rate) if slowness is None else slowness * prefill_rate
        queued = self.queued_tokens[candidates]
        waiting = self.queued_requests[candidates]
        now = self.clock()
        queue_empty = not np.count_nonzero(queued)
        if not queue_empty:
            queued -= self.drain.advance(candidates, queued, waiting, per_token, now)
        load = table.rows[:_LOAD_ROWS].take(candidates, axis=1)  # the table columns read here, in one gather
        decoding = load[_INFLIGHT]
        decoding -= waiting
        np.maximum(decoding, _ZERO, out=decoding)
        # requests the server reported waiting beyond all this EPP had in flight there at that scrape (another
        # replica's, or sent around the EPP): their size is unknown, so each counts as a typical prompt, uncached
        external = load[_WAITING]
        external -= load[_SCRAPE_INFLIGHT]
        if external[external.argmax()] > 0:
            np.maximum(external, _ZERO, out=external)
            waiting = waiting + external
            queued = queued + external * self.prompt_tokens
            queue_empty = False
        limit = max_tokens(state.request)
        output = min(limit, self.output_tokens) if limit else self.output_tokens
        if per_request:
            queueing = waiting * (per_request / REQUEST_UNIT)
            if not queue_empty:  # (an empty queue's prefill adds 0 everywhere)
                queueing += queued * prefill_rate
        else:
            queueing = queued * prefill_rate
        overflow = full = None
        capacity = load[_CACHE_BLOCKS]
        capacity *= load[_BLOCK_SIZE]
        kv = kv_beyond_cache(capacity, load[_KV_USAGE], self.kv_tokens, candidates, uncached, output)
        if kv is not None:
            beyond, full = kv
            if per_turnover:  # the cache must turn over `full` times before this request fits (plugins/kv_demand.py)
                queueing += full * per_turnover
            np.minimum(beyond, uncached + output, out=beyond)  # what it preempts, at most its own need, is recomputed
            beyond *= per_token
            overflow = beyond
        seconds = uncached * prefill_rate
        ends = self.phase.ends(candidates, now) if per_step else None
        if ends is None:
            seconds += base
        else:  # the step in progress: (max(window end, now) - now) x per_step / window (plugins/step_phase.py)
            seconds += base - now * (per_step / STEP_WINDOW)
            ends *= per_step / STEP_WINDOW
            seconds += ends
        if per_decode:
            seconds += decoding * (per_decode / DECODE_UNIT)
        if slowness is not None:
            queueing *= slowness
            seconds *= slowness
        seconds += queueing
        lift = None
        common = 0.0
        if common_blocks and counts is not None and match is not None:
            common = common_blocks / match.total_blocks
            if fewest < common_blocks:  # some candidate may lack part of it (`fewest` is 0 when not counted)
                short = np.maximum(common_blocks - counts, _ZERO) * block_tokens
                if short[short.argmax()] > 0:
                    if self.misses:
                        short *= self.miss_factor[candidates]
                    lift = np.minimum(short, uncached - _ONE)  # >= 0: short is, and uncached >= 1
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
            self.share.shortfall(candidates),
            full,
            deepest > common_blocks,
        )
        state.write(KEY, prediction)

    def _advance_drain(self, slot: int) -> None:
        per_token = self.model.slowness.item(slot) * self.model.coefficients[2] / PREFILL_UNIT
        self.drain.advance_one(
            slot, self.queued_tokens.item(slot), self.queued_requests.item(slot), per_token, self.clock()
        )

    def _learn_misses(self, note: PickNote, computed: float) -> None:
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
        per_token *= max_tokens(state.request) or self.output_tokens
        return per_token

    def picked(self, state: CycleState, result: SchedulingResult) -> None:
        prediction = state.read(KEY)
        if prediction is None:
            return
        slot = result.primary.item(0)
        candidates = prediction.candidates
        # candidates are sorted slots, usually every slot from 0: then the pick's is at its own index
        i = slot if slot < len(candidates) and candidates.item(slot) == slot else int(candidates.searchsorted(slot))
        if i >= len(candidates) or candidates.item(i) != slot:
            return
        uncached = prediction.uncached.item(i)
        self._advance_drain(slot)
        self.share.picked(slot, len(state.table))
        # .item() and Python floats: the same sums without a numpy scalar each
        self.queued_tokens[slot] = self.queued_tokens.item(slot) + uncached
        self.queued_requests[slot] = self.queued_requests.item(slot) + 1.0
        kv_need = uncached + prediction.output_tokens
        self.kv_tokens[slot] = self.kv_tokens.item(slot) + kv_need
        note = PickNote(
            slot,
            state.table.epoch.item(slot),
            uncached,
            prediction.queued.item(i),
            prediction.decoding.item(i),
            prediction.waiting.item(i),
            prediction.seconds.item(i),
            len(state.request.prompt_bytes),
            kv_need,
            0.0 if prediction.full is None else prediction.full.item(i),
            self.phase.ahead_one(slot, self.clock()),
        )
        result.remember(self._note_key, note)

    def _release(self, note: PickNote) -> None:
        if note.released:
            return
        note.released = True
        table = self.table
        if table is None or table.epoch.item(note.slot) != note.epoch:
            return  # the endpoint left; its slot's queue was reset then
        slot = note.slot
        self._advance_drain(slot)
        self.drain.released(slot, note.uncached)
        self.queued_tokens[slot] = max(self.queued_tokens.item(slot) - note.uncached, 0.0)
        self.queued_requests[slot] = max(self.queued_requests.item(slot) - 1.0, 0.0)

    def _release_kv(self, note: PickNote) -> None:
        if note.kv_released:
            return
        note.kv_released = True
        table = self.table
        if table is not None and table.epoch.item(note.slot) == note.epoch:
            self.kv_tokens[note.slot] = max(self.kv_tokens.item(note.slot) - note.kv_need, 0.0)

    def first_response(self, request: LLMRequest, result: SchedulingResult, ttft: float | None) -> None:
        """Learn the TTFT now, with the index's estimate of the uncached prompt: a response's usage comes only at
        its end, a whole output length later, and a model that waits for it lags every change of load."""
        note = result.recall(self._note_key)
        if note is None:
            return
        self._release(note)
        note.ttft = ttft
        table = self.table
        if ttft is None or ttft <= 0 or table is None:
            return
        now = self.clock()
        if self.decode_used:
            note.first_at = now
        record_ttft_prediction(abs(note.predicted - ttft) / ttft)
        if table.epoch.item(note.slot) == note.epoch:
            work = note.queued + max(note.uncached, 1.0)
            self.phase.chunk(note.slot, now)
            features = ttft_features(note.decoding, work, note.waiting, note.full, note.ahead)
            self.model.learn(note.slot, features, ttft, now)

    def response_chunk(self, result: SchedulingResult) -> None:
        note = result.recall(self._note_key)
        if note is not None and self.table is not None and self.table.epoch.item(note.slot) == note.epoch:
            self.phase.chunk(note.slot, self.clock())

    def response_complete(self, request: LLMRequest, result: SchedulingResult, usage: Usage | None) -> None:
        note = result.recall(self._note_key)
        if note is None:
            return
        self._release(note)
        self._release_kv(note)
        table = self.table
        if note.ttft is None or note.ttft <= 0 or usage is None or usage.prompt_tokens <= 0 or table is None:
            return
        if note.prompt_bytes > 0:
            ratio = note.prompt_bytes / usage.prompt_tokens
            if 0.5 < ratio < 64:
                self.bytes_per_token += 0.05 * (ratio - self.bytes_per_token)
        if table.epoch.item(note.slot) != note.epoch:
            return
        if usage.cached_reported:
            self._learn_misses(note, max(usage.prompt_tokens - usage.cached_tokens, 1))
        self.prompt_tokens += 0.05 * (usage.prompt_tokens - self.prompt_tokens)
        if usage.completion_tokens > 0:
            self.output_tokens += 0.05 * (usage.completion_tokens - self.output_tokens)
        if self.decode_used and usage.completion_tokens >= 2 and note.first_at > 0:
            now = self.clock()
            per_token = (now - note.first_at) / (usage.completion_tokens - 1)
            self.decode.learn(note.slot, (1.0, (note.decoding + 1.0) / DECODE_UNIT), per_token, now)
