"""Load scorers over in-flight work and queue depth, and the producer of the in-flight load they read.

In-flight accounting is the director's: when it routes a request it adds 1 request and
max(body bytes / 4, 1) · (1 + 1.5) tokens (input plus the estimated output) to the picked endpoint's
`inflight_requests` / `inflight_tokens` columns, and takes them off when the stream ends (response
complete, error or client gone). The `inflight-load-producer` publishes those columns to the cycle
state under INFLIGHT_KEY, which is where the scorers read them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from epp.datastore.fresh import cached_fresh_load
from epp.datastore.table import EndpointTable, SlotArray
from epp.scheduling.plugin import CycleState, DataProducer, Scorer, Scores, require_non_negative, require_positive
from epp.scheduling.types import StateKey
from epp.units import duration_seconds

INFLIGHT_KEY: StateKey[InFlightLoad] = StateKey("inflight-load")


@dataclass(frozen=True)
class InFlightLoad:
    """Per-slot in-flight requests and tokens (views of the table's columns, indexed by slot)."""

    requests: npt.NDArray[np.float64]
    tokens: npt.NDArray[np.float64]


def inflight_load(state: CycleState) -> InFlightLoad:
    """The in-flight load of this cycle: the producer's, or the table's columns when no producer ran."""
    load = state.read(INFLIGHT_KEY)
    if load is None:
        return InFlightLoad(state.table.inflight_requests, state.table.inflight_tokens)
    return load


class InflightLoadProducer(DataProducer):
    type_name = "inflight-load-producer"

    def __init__(self, name: str, parameters: object) -> None:
        super().__init__(name, parameters)
        self._load: InFlightLoad | None = None

    def bind(self, table: EndpointTable) -> None:
        self._load = InFlightLoad(table.inflight_requests, table.inflight_tokens)

    def produce(self, state: CycleState, candidates: SlotArray) -> None:
        load = self._load
        if load is None or load.requests is not state.table.inflight_requests:
            load = InFlightLoad(state.table.inflight_requests, state.table.inflight_tokens)
        state.write(INFLIGHT_KEY, load)


@dataclass
class TokenLoadParameters:
    queue_threshold_tokens: int = 4_194_304

    def validate(self) -> None:
        require_positive("queueThresholdTokens", self.queue_threshold_tokens)


class TokenLoadScorer(Scorer):
    """1 - min(1, in-flight tokens / queueThresholdTokens): an endpoint with nothing in flight scores 1."""

    type_name = "token-load-scorer"
    Parameters = TokenLoadParameters
    consumes = InflightLoadProducer.type_name

    def __init__(self, name: str, parameters: TokenLoadParameters) -> None:
        super().__init__(name, parameters)
        self.threshold = float(parameters.queue_threshold_tokens)

    def score(self, state: CycleState, candidates: SlotArray) -> Scores:
        tokens = inflight_load(state).tokens.take(candidates)
        result: Scores = 1.0 - np.minimum(tokens / self.threshold, 1.0)
        return result


@dataclass
class LoadAwareParameters:
    threshold: int = 128

    def validate(self) -> None:
        require_positive("threshold", self.threshold, "queue length")


class LoadAwareScorer(Scorer):
    """0.5 · (1 - min(queue, threshold) / threshold): empty queue 0.5, queue at the threshold or beyond 0."""

    type_name = "load-aware-scorer"
    Parameters = LoadAwareParameters

    def __init__(self, name: str, parameters: LoadAwareParameters) -> None:
        super().__init__(name, parameters)
        self.threshold = float(parameters.threshold)

    def score(self, state: CycleState, candidates: SlotArray) -> Scores:
        queue = np.minimum(cached_fresh_load(state, candidates).waiting, self.threshold)
        result: Scores = 0.5 * (1.0 - queue / self.threshold)
        return result


@dataclass
class ActiveRequestParameters:
    idle_threshold: int = 0
    max_busy_score: float = 1.0
    #: accepted for configs written for the reference, which expires its own request records after this long;
    #: here the director releases every routed request when its stream ends, so nothing needs to expire
    request_timeout: str = "2m"

    def validate(self) -> None:
        require_non_negative("idleThreshold", self.idle_threshold)
        if not 0.0 <= self.max_busy_score <= 1.0:
            raise ValueError(f"maxBusyScore must be in [0, 1], got {self.max_busy_score}")
        if duration_seconds(self.request_timeout, "requestTimeout") != duration_seconds("2m", "requestTimeout"):
            raise ValueError(
                f"requestTimeout {self.request_timeout!r} is not configurable here: the director releases every "
                "routed request the moment its stream ends, so no record needs to expire; remove the parameter"
            )


class ActiveRequestScorer(Scorer):
    """Idle (in-flight requests ≤ idleThreshold) ⇒ 1.0; busy ⇒ (max - n) / max · maxBusyScore.

    max is the largest in-flight count among the candidates (the reference takes it over every endpoint it
    has seen requests for; the same whenever the candidates are the whole pool), so the busiest scores 0.
    """

    type_name = "active-request-scorer"
    Parameters = ActiveRequestParameters

    def __init__(self, name: str, parameters: ActiveRequestParameters) -> None:
        super().__init__(name, parameters)
        self.idle = float(parameters.idle_threshold)
        self.max_busy = parameters.max_busy_score

    def score(self, state: CycleState, candidates: SlotArray) -> Scores:
        active = inflight_load(state).requests.take(candidates)
        busiest = active.max() if len(active) else 0.0
        if busiest <= self.idle:
            return np.ones(len(candidates))
        result: Scores = np.where(active <= self.idle, 1.0, (busiest - active) / busiest * self.max_busy)
        return result
