"""Predicted time to first token: the `predicted-ttft-producer` and the `predicted-ttft-scorer`.

For each candidate the producer predicts how long this request would wait for its first token there:

    TTFT = base + per_decode · decoding / 100 + per_prefill · (queued prefill + own uncached prefill) / 10,000

- queued prefill: the uncached prompt tokens of the requests this EPP sent to the endpoint that have not
  produced their first token yet (exact and never stale: charged at the pick, released at the first chunk);
- own uncached prefill: this request's prompt tokens minus those the endpoint holds (the approximate prefix
  index's match), so a warm endpoint is priced by what it saves, not by a weight;
- decoding: requests on the endpoint that are past their first token (their decode tokens share each step).

The three coefficients are learned online per endpoint from what the EPP observes: the time from the pick to
the first streamed chunk, and the prompt and cached token counts the server reports in `usage`. The learner is
a small Kalman filter (the coefficients drift as a random walk, an observation's noise grows with its size), so
a slower GPU or a server that degrades is priced in after a few of its responses, and an endpoint that got no
traffic for a while trusts its old coefficients less. A new endpoint starts from the fleet's average.
Prompt tokens are estimated from bytes with a ratio learned from the same `usage` reports.

The scorer turns predictions into scores in (0, 1]: fastest / predicted, so the fastest candidate scores 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from epp.datastore.table import Endpoint, EndpointTable, SlotArray
from epp.observability.extension import record_ttft_prediction
from epp.scheduling.plugin import CycleState, DataProducer, Scorer, Scores
from epp.scheduling.types import LLMRequest, SchedulingResult, Usage
from plugins.prefix import STATE_KEY as PREFIX_KEY
from plugins.prefix import ApproxPrefixCacheProducer, PrefixMatch

KEY = "predicted-ttft"
DECODE_UNIT = 100.0
PREFILL_UNIT = 10_000.0
#: observations further off than this many times the prediction are not learned from (a stalled stream,
#: a client that read slowly); they are still counted in the error metric
OUTLIER_FACTOR = 20.0
#: squared prediction error over its expected variance past which the learner widens its doubt
SURPRISE = 9.0


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

    def validate(self) -> None:
        if self.prefill_tokens_per_second <= 0:
            raise ValueError(f"prefillTokensPerSecond must be positive, got {self.prefill_tokens_per_second}")
        if self.base_seconds < 0:
            raise ValueError(f"baseSeconds must be >= 0, got {self.base_seconds}")
        if not 0 < self.drift_per_second <= 1:
            raise ValueError(f"driftPerSecond must be in (0, 1], got {self.drift_per_second}")
        if not 0 < self.observation_noise <= 1:
            raise ValueError(f"observationNoise must be in (0, 1], got {self.observation_noise}")


@dataclass(frozen=True, slots=True)
class Prediction:
    """Predicted TTFT (seconds) and this request's uncached prompt tokens per candidate, aligned."""

    candidates: SlotArray
    seconds: npt.NDArray[np.float64]
    uncached: npt.NDArray[np.float64]
    queued: npt.NDArray[np.float64]
    decoding: npt.NDArray[np.float64]

    def at(self, candidates: SlotArray) -> npt.NDArray[np.float64]:
        """Predictions for `candidates` (the producer's candidates or a sorted subset of them)."""
        if candidates is self.candidates:
            return self.seconds
        return self.seconds[np.searchsorted(self.candidates, candidates)]


class _Note:
    """What one pick charged and predicted, kept on the result until the response ends."""

    __slots__ = ("decoding", "epoch", "predicted", "prompt_bytes", "queued", "released", "slot", "ttft", "uncached")

    def __init__(
        self, slot: int, epoch: float, uncached: float, queued: float, decoding: float, predicted: float, size: int
    ) -> None:
        self.slot = slot
        self.epoch = epoch
        self.uncached = uncached
        self.queued = queued
        self.decoding = decoding
        self.predicted = predicted
        self.prompt_bytes = size
        self.released = False
        self.ttft: float | None = None


class TTFTModel:
    """Per-slot coefficients (base, per_decode, per_prefill) and their covariance; one Kalman step per
    observation in plain Python (three features: cheaper than numpy's call overhead)."""

    def __init__(self, capacity: int, parameters: PredictedTTFTParameters) -> None:
        per_prefill = PREFILL_UNIT / parameters.prefill_tokens_per_second
        self.prior = (parameters.base_seconds, parameters.base_seconds / 2, per_prefill)
        self.base = np.full(capacity, self.prior[0])
        self.per_decode = np.full(capacity, self.prior[1])
        self.per_prefill = np.full(capacity, self.prior[2])
        self.covariance: list[list[float]] = [self._prior_covariance() for _ in range(capacity)]
        self.updated = np.zeros(capacity)
        self.observations = np.zeros(capacity)
        self.drift = [(parameters.drift_per_second * p) ** 2 for p in self.prior]
        self.noise = parameters.observation_noise

    def _prior_covariance(self) -> list[float]:
        b, d, p = self.prior
        return [b * b, 0.0, 0.0, 0.0, d * d, 0.0, 0.0, 0.0, p * p]

    def reset(self, slot: int) -> None:
        """A new endpoint in `slot`: the average of the endpoints learned so far, with the prior's doubt."""
        learned = self.observations > 0
        learned[slot] = False
        if learned.any():
            self.base[slot] = float(self.base[learned].mean())
            self.per_decode[slot] = float(self.per_decode[learned].mean())
            self.per_prefill[slot] = float(self.per_prefill[learned].mean())
        else:
            self.base[slot], self.per_decode[slot], self.per_prefill[slot] = self.prior
        self.covariance[slot] = self._prior_covariance()
        self.updated[slot] = 0.0
        self.observations[slot] = 0.0

    def predict(self, slot: int, decoding: float, work: float) -> float:
        return float(
            self.base[slot]
            + self.per_decode[slot] * decoding / DECODE_UNIT
            + self.per_prefill[slot] * work / PREFILL_UNIT
        )

    def learn(self, slot: int, decoding: float, work: float, ttft: float, now: float) -> None:
        c = self.covariance[slot]
        last = self.updated[slot]
        elapsed = min(now - last, 600.0) if last > 0 else 0.0
        if elapsed > 0:  # the coefficients may have drifted while nothing was heard
            c[0] += self.drift[0] * elapsed
            c[4] += self.drift[1] * elapsed
            c[8] += self.drift[2] * elapsed
        x0, x1, x2 = 1.0, decoding / DECODE_UNIT, work / PREFILL_UNIT
        theta = (float(self.base[slot]), float(self.per_decode[slot]), float(self.per_prefill[slot]))
        p0 = c[0] * x0 + c[1] * x1 + c[2] * x2
        p1 = c[3] * x0 + c[4] * x1 + c[5] * x2
        p2 = c[6] * x0 + c[7] * x1 + c[8] * x2
        noise = (self.noise * ttft) ** 2 + 1e-6
        error = ttft - (theta[0] * x0 + theta[1] * x1 + theta[2] * x2)
        spread = x0 * p0 + x1 * p1 + x2 * p2
        surprise = error * error / (spread + noise)
        if surprise > SURPRISE:  # far outside what the model expects: the endpoint changed, doubt it more
            scale = surprise / SURPRISE
            c[:] = [v * scale for v in c]
            p0, p1, p2, spread = p0 * scale, p1 * scale, p2 * scale, spread * scale
        variance = spread + noise
        k0, k1, k2 = p0 / variance, p1 / variance, p2 / variance
        self.base[slot] = max(theta[0] + k0 * error, 0.0)
        self.per_decode[slot] = max(theta[1] + k1 * error, 0.0)
        self.per_prefill[slot] = max(theta[2] + k2 * error, self.prior[2] / 100)
        gain = (k0, k1, k2)
        row = (p0, p1, p2)
        for i in range(3):
            for j in range(3):
                c[3 * i + j] -= gain[i] * row[j]
        self.updated[slot] = now
        self.observations[slot] += 1


class PredictedTTFTProducer(DataProducer):
    type_name = "predicted-ttft-producer"
    Parameters = PredictedTTFTParameters
    consumes = ApproxPrefixCacheProducer.type_name

    def __init__(self, name: str, parameters: PredictedTTFTParameters) -> None:
        super().__init__(name, parameters)
        self.parameters: PredictedTTFTParameters = parameters
        self.model = TTFTModel(0, parameters)
        self.queued_tokens = np.zeros(0)
        self.queued_requests = np.zeros(0)
        self.table: EndpointTable | None = None
        #: prompt bytes per prompt token, learned from usage reports
        self.bytes_per_token = 4.0
        self.clock = time.monotonic

    def bind(self, table: EndpointTable) -> None:
        self.table = table
        self.model = TTFTModel(table.capacity, self.parameters)
        self.queued_tokens = np.zeros(table.capacity)
        self.queued_requests = np.zeros(table.capacity)

        def on_change(kind: str, slot: int, endpoint: Endpoint) -> None:
            if kind == "update":
                return
            self.queued_tokens[slot] = 0.0
            self.queued_requests[slot] = 0.0
            if kind == "add":
                self.model.reset(slot)

        table.subscribe(on_change)

    def produce(self, state: CycleState, candidates: SlotArray) -> None:
        table = state.table
        model = self.model
        prompt_tokens = max(len(state.request.prompt_bytes) / self.bytes_per_token, 1.0)
        match: PrefixMatch | None = state.data.get(PREFIX_KEY)
        if match is not None and match.total_blocks:
            cached = match.matched_blocks(candidates) * (match.block_bytes / self.bytes_per_token)
            uncached = np.maximum(prompt_tokens - cached, 1.0)
        else:
            uncached = np.full(len(candidates), prompt_tokens)
        queued = self.queued_tokens.take(candidates)
        decoding = table.inflight_requests.take(candidates)
        decoding -= self.queued_requests.take(candidates)
        np.maximum(decoding, 0.0, out=decoding)
        seconds = model.per_prefill.take(candidates)
        seconds *= (queued + uncached) / PREFILL_UNIT
        seconds += model.base.take(candidates)
        seconds += model.per_decode.take(candidates) * (decoding / DECODE_UNIT)
        state.data[KEY] = Prediction(candidates, seconds, uncached, queued, decoding)

    def picked(self, state: CycleState, result: SchedulingResult) -> None:
        prediction: Prediction | None = state.data.get(KEY)
        if prediction is None:
            return
        slot = int(result.primary[0])
        at = np.flatnonzero(prediction.candidates == slot)
        if not len(at):
            return
        i = int(at[0])
        uncached = float(prediction.uncached[i])
        self.queued_tokens[slot] += uncached
        self.queued_requests[slot] += 1.0
        note = _Note(
            slot,
            float(state.table.epoch[slot]),
            uncached,
            float(prediction.queued[i]),
            float(prediction.decoding[i]),
            float(prediction.seconds[i]),
            len(state.request.prompt_bytes),
        )
        result.notes[self.name] = note

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

    def first_response(self, request: LLMRequest, result: SchedulingResult, ttft: float | None) -> None:
        note: _Note | None = result.notes.get(self.name)
        if note is None:
            return
        self._release(note)
        note.ttft = ttft

    def response_complete(self, request: LLMRequest, result: SchedulingResult, usage: Usage | None) -> None:
        note: _Note | None = result.notes.get(self.name)
        if note is None:
            return
        self._release(note)
        ttft = note.ttft
        table = self.table
        if ttft is None or ttft <= 0 or usage is None or usage.prompt_tokens <= 0 or table is None:
            return
        if note.prompt_bytes > 0:
            ratio = note.prompt_bytes / usage.prompt_tokens
            if 0.5 < ratio < 64:
                self.bytes_per_token += 0.05 * (ratio - self.bytes_per_token)
        record_ttft_prediction(abs(note.predicted - ttft) / ttft)
        if table.epoch[note.slot] != note.epoch or ttft > OUTLIER_FACTOR * max(note.predicted, 1e-3):
            return
        own = max(usage.prompt_tokens - usage.cached_tokens, 1)
        self.model.learn(note.slot, note.decoding, note.queued + own, ttft, self.clock())


class PredictedTTFTScorer(Scorer):
    """fastest predicted TTFT / this candidate's predicted TTFT (1 for the fastest, towards 0 for slower)."""

    type_name = "predicted-ttft-scorer"
    bounded = True
    consumes = PredictedTTFTProducer.type_name

    def score(self, state: CycleState, candidates: SlotArray) -> Scores:
        prediction: Prediction | None = state.data.get(KEY)
        if prediction is None:
            return np.ones(len(candidates))
        seconds = np.maximum(prediction.at(candidates), 1e-6)
        result: Scores = seconds.min() / seconds
        return result
