"""The pool's latency model: coefficients shared by every endpoint, learned online by a Kalman filter, times a
per-endpoint slowness factor (used by the predicted-TTFT producer, plugins/latency.py).

With --shared-state each replica also publishes its own estimate of every endpoint's slowness with its
precision (1 / variance, in log space) as two additive columns (epp.shared.columns sums them over the live
replicas), and predicts with the precision-weighted mean of all replicas' estimates: an endpoint one replica
learned slow is priced slow by the others before they send it anything. Each replica learns only from its
own responses, so no estimate is counted twice."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import mul

import numpy as np

from epp.plugins.step_phase import STEP_WINDOW
from epp.scheduling.plugin import require_non_negative, require_positive

DECODE_UNIT = 100.0
PREFILL_UNIT = 10_000.0
REQUEST_UNIT = 10.0
#: an endpoint's slowness moves by this fraction of the log-ratio observed/predicted per response (the
#: decode model's rate; the TTFT model's is the producer's slownessRate) ...
SLOWNESS_RATE = 0.2
#: ... of a log-ratio clipped to this (one response moves it by at most a factor e^(0.2 x 1.5) = 1.35)
SLOWNESS_STEP = 1.5
#: the TTFT model's clip: a TTFT's own noise (where in an engine step it arrived, which requests were ahead) is often
#: a factor of 1.5-2 either way past saturation, so each response moves an endpoint's slowness by at most
#: e^(slownessRate x 0.3) and the factor tracks the median of observed / predicted, not a mean pulled by outliers
#: (1.5 let homogeneous servers' factors wander by +-10 % and misroute a shared-prefix pool past saturation)
TTFT_SLOWNESS_STEP = 0.3
#: an observation's error is clipped to this many of its expected standard deviations before the fit: past
#: saturation one TTFT is often several times the next (a cache filling behind a long prompt), and at 3 each such
#: response, learned a TTFT late, swung the coefficients into the next calm stretch (the virtual fleet's prediction
#: error 1-4 points lower at 1 on most workloads past saturation, the same routing)
ERROR_CLIP = 1.0
#: every this many responses, endpoints quiet for QUIET_SECONDS move halfway back to the fleet's median slowness
RELAX_EVERY = 32
QUIET_SECONDS = 5.0
#: responses after which an endpoint's own slowness starts to move (the fleet's fit settles first)
WARMUP_OBSERVATIONS = 5
#: variance of an endpoint's log-slowness before anything is learned (one standard deviation: a factor e)
PRIOR_LOG_VARIANCE = 1.0
#: slowness is kept within [SLOWNESS_FLOOR, SLOWNESS_CEILING]; the shared weighted logs are counted from the
#: floor so that they stay >= 0 like every shared column
SLOWNESS_FLOOR, SLOWNESS_CEILING = 0.05, 50.0
LOG_FLOOR = math.log(SLOWNESS_FLOOR)
#: the TTFT model's seconds per turnover of a full KV cache (plugins/kv_demand.py) start here, with this doubt: a
#: cache fills only past saturation, when TTFTs arrive seconds late, so a prior of 0 left the first seconds of a
#: full cache predicted as before (fits of the virtual fleet's engines: 1.8-3 s; priors 0, 2 and 3 measured there)
TURNOVER_PRIOR, TURNOVER_DOUBT = 3.0, 1.0


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
    #: endpoint's speed is then priced by its own queue alone, which drains slower on a slower GPU; that left a
    #: half-speed server's own prefill predicted at full speed, 43 % low)
    slowness_rate: float = 0.1

    def validate(self) -> None:
        require_positive("prefillTokensPerSecond", self.prefill_tokens_per_second)
        require_non_negative("baseSeconds", self.base_seconds)
        if not 0 < self.drift_per_second <= 1:
            raise ValueError(f"driftPerSecond must be in (0, 1], got {self.drift_per_second}")
        if not 0 < self.observation_noise <= 1:
            raise ValueError(f"observationNoise must be in (0, 1], got {self.observation_noise}")
        if not 0 <= self.slowness_rate <= 1:
            raise ValueError(f"slownessRate must be in [0, 1], got {self.slowness_rate}")


class FleetModel:
    """seconds = slowness[endpoint] x (coefficients · features): coefficients shared by the fleet, a slowness
    factor per endpoint.

    The coefficients say how an engine of this pool turns load into waiting time; they are learned from every
    endpoint's observations (a Kalman filter over the observations divided by their endpoint's slowness; an
    observation's error is clipped to one of its expected standard deviations, so one stalled stream cannot
    throw the fit). Each endpoint's slowness (1 = as the fleet's coefficients say) follows the ratio of what it
    did to what the fleet's coefficients predicted, as an exponentially weighted mean in log space, bounded per
    step: a GPU half as fast settles near 2 within a few responses, a server that degrades mid-run follows
    within seconds, and no single observation moves it by more than a factor of e^(slowness_rate x
    slowness_step) (TTFT_SLOWNESS_STEP for the TTFT model, SLOWNESS_STEP for the decode model).
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
        slowness_step: float = SLOWNESS_STEP,
    ) -> None:
        n = self.features_count = len(prior)
        self.slowness_rate = slowness_rate
        self.slowness_step = slowness_step
        self.prior = prior
        self.coefficients = list(prior)
        self.covariance = [doubt[i] ** 2 if i == j else 0.0 for i in range(n) for j in range(n)]
        self.drift = [(drift_per_second * d) ** 2 for d in doubt]
        self.max_variance = [(10 * d) ** 2 for d in doubt]
        self.floors = floors
        self.noise = noise
        self.updated = 0.0
        #: the slowness predictions use: this replica's own estimate, or the precision-weighted mean of every
        #: replica's when they are shared (read-only: set_slowness() writes it and keeps `varied` true to it)
        self._slowness = np.ones(capacity)
        self.slowness = self._slowness.view()
        self.slowness.flags.writeable = False
        #: whether any endpoint's slowness has been set to other than 1 (until then predictions skip multiplying
        #: by it, which would change nothing)
        self.varied = False
        #: this replica's own estimate (learned from its own responses) and its variance in log space
        self.own = np.ones(capacity)
        self.own_variance = np.full(capacity, PRIOR_LOG_VARIANCE)
        #: summed over replicas (this one's part is `_own_parts`): the precision of each estimate of an endpoint
        #: learned so far, and precision x (log slowness - LOG_FLOOR)
        self.precision = np.zeros(capacity)
        self.weighted_log = np.zeros(capacity)
        self._own_parts = np.zeros((capacity, 2))
        self.observations = np.zeros(capacity)
        #: when each endpoint last taught the model (0 = never)
        self.last_seen = np.zeros(capacity)
        self._learned = 0
        #: with --shared-state: called with (slot, features, seconds) after each observation learned here (epp.shared)
        self.on_learn: Callable[[int, Sequence[float], float], None] | None = None

    def reset(self, slot: int) -> None:
        """A new endpoint in `slot`: the fleet's median slowness."""
        learned = self.observations > 0
        learned[slot] = False
        self.own[slot] = float(np.median(self.own[learned])) if learned.any() else 1.0
        self.set_slowness(slot, float(self.own[slot]))
        self.own_variance[slot] = PRIOR_LOG_VARIANCE
        self.observations[slot] = 0.0
        self.last_seen[slot] = 0.0
        # nothing of this endpoint's learned yet (the peers' part is folded in again by epp.shared)
        self.precision[slot] = self.weighted_log[slot] = 0.0
        self._own_parts[slot] = 0.0

    def shared_columns(self, prefix: str) -> dict[str, np.ndarray]:
        """The per-endpoint estimates other replicas add up (see epp.shared.columns)."""
        return {f"{prefix}-precision": self.precision, f"{prefix}-weighted-log": self.weighted_log}

    def refresh(self, slot: int) -> None:
        """Recompute the slowness predictions use at `slot` (after its own estimate or the peers' part changed)."""
        precision = float(self.precision[slot])
        if precision > 1e-9:
            mean = float(self.weighted_log[slot]) / precision + LOG_FLOOR
            self.set_slowness(slot, min(max(math.exp(mean), SLOWNESS_FLOOR), SLOWNESS_CEILING))
        else:
            self.set_slowness(slot, float(self.own[slot]))

    def set_slowness(self, slot: int, value: float) -> None:
        self._slowness[slot] = value
        self.varied = self.varied or value != 1.0

    def _publish(self, slot: int) -> None:
        """This replica's own estimate at `slot` changed: update its part of the shared sums."""
        precision = 1.0 / float(self.own_variance[slot])
        weighted = precision * (math.log(float(self.own[slot])) - LOG_FLOOR)
        own = self._own_parts[slot]
        self.precision[slot] += precision - own[0]
        self.weighted_log[slot] += weighted - own[1]
        own[0], own[1] = precision, weighted
        self.refresh(slot)

    def fleet_prediction(self, x: Sequence[float]) -> float:
        seconds: float = sum(map(mul, self.coefficients, x))
        return seconds

    def predict(self, slot: int, x: Sequence[float]) -> float:
        return float(self.slowness[slot]) * self.fleet_prediction(x)

    def learn(self, slot: int, x: Sequence[float], seconds: float, now: float) -> None:
        rate = self.slowness_rate
        if rate > 0 and (
            self.observations[slot] >= WARMUP_OBSERVATIONS or self.observations.sum() >= 4 * WARMUP_OBSERVATIONS
        ):
            own = float(self.own[slot])
            fleet = max(self.fleet_prediction(x), 1e-4)
            step = math.log(max(seconds, 1e-6) / (own * fleet))
            step = min(max(step, -self.slowness_step), self.slowness_step)
            self.own[slot] = min(max(own * math.exp(rate * step), SLOWNESS_FLOOR), SLOWNESS_CEILING)
            # an exponentially weighted mean's variance: the old one's shrunk by (1 - rate)^2, plus this step's noise
            self.own_variance[slot] = (1 - rate) ** 2 * self.own_variance[slot] + (rate * self.noise) ** 2
            self._publish(slot)
        slowness = self.slowness.item(slot)
        self.observations[slot] += 1
        self.last_seen[slot] = now
        self._learned += 1
        if rate > 0 and self._learned % RELAX_EVERY == 0:
            self._relax(now)
        self._fit(x, seconds / slowness, now)
        if self.on_learn is not None:
            self.on_learn(slot, x, seconds)

    def learn_peer(self, slot: int, x: Sequence[float], seconds: float, now: float) -> None:
        """Another replica's observation at `slot`: the fleet's coefficients learn from it, and it counts towards the
        observations after which the endpoint's own slowness starts to move (the fit has settled on the pool's
        responses); the slowness itself does not learn from it (each replica shares its own estimate of that)."""
        self.observations[slot] += 1
        self._fit(x, seconds / self.slowness.item(slot), now)

    def _relax(self, now: float) -> None:
        """An endpoint that has not answered for a while (one judged slow gets no traffic) moves halfway back to
        the fleet's median slowness: it gets a request again, and that request shows whether it recovered."""
        learned = self.observations > 0
        quiet = learned & (self.last_seen < now - QUIET_SECONDS)
        if quiet.any() and learned.sum() > quiet.sum():
            median = float(np.median(self.own[learned & ~quiet]))
            self.own[quiet] = np.sqrt(self.own[quiet] * median)
            self.own_variance[quiet] = (self.own_variance[quiet] + PRIOR_LOG_VARIANCE) / 2
            self.last_seen[quiet] = now
            for slot in np.flatnonzero(quiet & (self._own_parts[:, 0] > 0)).tolist():
                self._publish(slot)
            for slot in np.flatnonzero(quiet & (self._own_parts[:, 0] == 0)).tolist():
                self.refresh(slot)

    def _fit(self, x: Sequence[float], y: float, now: float) -> None:
        # Sums are sum(map(mul, ...)) rather than generator expressions: the same additions in the same order, without
        # a Python frame per term (this runs at every streamed response's first chunk).
        n = self.features_count
        c = self.covariance
        elapsed = min(now - self.updated, 600.0) if self.updated > 0 else 0.0
        self.updated = now
        step = max(elapsed, 0.01)
        for i, (drift, ceiling) in enumerate(zip(self.drift, self.max_variance, strict=True)):
            # the coefficients may drift (a new model version, another traffic mix)
            c[i * n + i] = min(c[i * n + i] + drift * step, ceiling)
        theta = self.coefficients
        px = [sum(map(mul, c[i * n : i * n + n], x)) for i in range(n)]
        variance = sum(map(mul, x, px)) + (self.noise * y) ** 2 + 1e-8
        error = y - sum(map(mul, theta, x))
        limit = ERROR_CLIP * math.sqrt(variance)
        error = min(max(error, -limit), limit)
        gain = [v / variance for v in px]
        for i, floor in enumerate(self.floors):
            theta[i] = max(theta[i] + gain[i] * error, floor)
        c[:] = [c[i * n + j] - gain[i] * px[j] for i in range(n) for j in range(n)]
        for i in range(n):  # keep it a covariance despite rounding: positive variances, |correlation| <= 1
            c[i * n + i] = max(c[i * n + i], 1e-12)
        for i in range(n):
            for j in range(i + 1, n):
                bound = math.sqrt(c[i * n + i] * c[j * n + j])
                value = min(max(0.5 * (c[i * n + j] + c[j * n + i]), -bound), bound)
                c[i * n + j] = c[j * n + i] = value


def ttft_model(capacity: int, parameters: PredictedTTFTParameters) -> FleetModel:
    """TTFT = slowness x (base + per_decode x decoding/100 + per_prefill x work/10,000 + per_request x waiting/10
    + per_turnover x full + per_step x ahead), `full` the turnovers of a full KV cache before the request fits
    (plugins/kv_demand.py), `ahead` the part of the step window since the endpoint's last response chunk not yet
    elapsed (plugins/step_phase.py, 0..1)."""
    base = parameters.base_seconds
    per_prefill = PREFILL_UNIT / parameters.prefill_tokens_per_second
    return FleetModel(
        capacity,
        prior=(base, base / 2, per_prefill, 0.0, TURNOVER_PRIOR, base),
        # per_request starts at 0 but may grow to a base per request
        doubt=(base, base / 2, per_prefill, base, TURNOVER_DOUBT, base),
        floors=(0.0, 0.0, per_prefill / 100, 0.0, 0.0, 0.0),
        drift_per_second=parameters.drift_per_second,
        noise=parameters.observation_noise,
        slowness_rate=parameters.slowness_rate,
        slowness_step=TTFT_SLOWNESS_STEP,
    )


def ttft_features(
    decoding: float, work: float, waiting: float, full: float = 0.0, ahead: float = 0.0
) -> tuple[float, float, float, float, float, float]:
    return (1.0, decoding / DECODE_UNIT, work / PREFILL_UNIT, waiting / REQUEST_UNIT, full, ahead / STEP_WINDOW)


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
