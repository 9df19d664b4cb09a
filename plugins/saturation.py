"""The saturation detectors: how loaded the pool is for admission (`saturation`), and, used in a profile, a
filter that keeps the endpoints below their limits."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from epp.datalayer.staleness import fresh_mask
from epp.datastore.fresh import cached_fresh_load, fresh_load
from epp.datastore.table import EndpointTable, SlotArray
from epp.scheduling.plugin import CycleState, Filter, require_non_negative, require_positive
from epp.units import duration_seconds


@dataclass
class UtilizationParameters:
    queue_depth_threshold: int = 5
    kv_cache_util_threshold: float = 0.8
    metrics_staleness_threshold: str = "200ms"
    headroom: float = 0.0

    def validate(self) -> None:
        require_positive("queueDepthThreshold", self.queue_depth_threshold)
        if not 0 < self.kv_cache_util_threshold <= 1:
            raise ValueError(f"kvCacheUtilThreshold must be in (0, 1], got {self.kv_cache_util_threshold}")
        if duration_seconds(self.metrics_staleness_threshold, "metricsStalenessThreshold") <= 0:
            raise ValueError(f"metricsStalenessThreshold must be positive, got {self.metrics_staleness_threshold!r}")
        require_non_negative("headroom", self.headroom, "a fraction, 0.2 = 20%")


class UtilizationDetector(Filter):
    """Saturation: per endpoint max(queue / Q, kv / KV); stale or never-scraped endpoints count as 1.0; pool = mean.

    As a filter: keep endpoints with fresh metrics, queue < Q·(1 + headroom) and kv < KV·(1 + headroom);
    when none remain, keep them all (fail-open).
    """

    type_name = "utilization-detector"
    Parameters = UtilizationParameters

    def __init__(self, name: str, parameters: UtilizationParameters) -> None:
        super().__init__(name, parameters)
        self.q = float(parameters.queue_depth_threshold)
        self.kv = parameters.kv_cache_util_threshold
        self.staleness = duration_seconds(parameters.metrics_staleness_threshold, "metricsStalenessThreshold")
        self.queue_limit = self.q * (1.0 + parameters.headroom)
        self.kv_limit = self.kv * (1.0 + parameters.headroom)
        #: monotonic clock the scrape plane stamps `metrics_time` with (replaceable in tests)
        self.clock: Callable[[], float] = time.monotonic

    def saturation(self, table: EndpointTable, candidates: SlotArray, now: float) -> float:
        if len(candidates) == 0:
            return 1.0
        load = fresh_load(table, candidates)
        per_endpoint = np.maximum(load.waiting / self.q, load.kv_usage / self.kv)
        scraped = table.metrics_time.take(candidates)
        stale = (scraped == 0) | (now - scraped > self.staleness)
        per_endpoint[stale] = 1.0
        return float(per_endpoint.mean())

    def filter(self, state: CycleState, candidates: SlotArray) -> SlotArray:
        load = cached_fresh_load(state, candidates)
        keep = (
            fresh_mask(state.table, candidates, self.staleness, self.clock())
            & (load.waiting < self.queue_limit)
            & (load.kv_usage < self.kv_limit)
        )
        if not keep.any():
            return candidates
        return candidates[keep]


CONCURRENCY_MODES = ("requests", "tokens")


@dataclass
class ConcurrencyParameters:
    concurrency_mode: str = "requests"
    max_concurrency: int = 100
    max_token_concurrency: int = 1_000_000
    headroom: float = 0.0

    def validate(self) -> None:
        if self.concurrency_mode not in CONCURRENCY_MODES:
            modes = " or ".join(CONCURRENCY_MODES)
            raise ValueError(f"concurrencyMode must be {modes}, got {self.concurrency_mode!r}")
        require_positive("maxConcurrency", self.max_concurrency)
        require_positive("maxTokenConcurrency", self.max_token_concurrency)
        require_non_negative("headroom", self.headroom, "a fraction, 0.2 = 20%")


class ConcurrencyDetector(Filter):
    """In-flight work the EPP routed itself (the director's per-endpoint in-flight columns) against a capacity.

    Saturation = Σ in-flight / (capacity · endpoints), capacity maxConcurrency requests or maxTokenConcurrency
    tokens per endpoint (concurrencyMode); no endpoints ⇒ 1.0. As a filter: keep endpoints whose in-flight is
    below int(capacity · (1 + headroom)) — a hard limit, so every endpoint at its limit empties the profile.
    """

    type_name = "concurrency-detector"
    Parameters = ConcurrencyParameters

    def __init__(self, name: str, parameters: ConcurrencyParameters) -> None:
        super().__init__(name, parameters)
        self.tokens = parameters.concurrency_mode == "tokens"
        capacity = parameters.max_token_concurrency if self.tokens else parameters.max_concurrency
        self.capacity = float(capacity)
        self.limit = float(int(capacity * (1.0 + parameters.headroom)))

    def _inflight(self, table: EndpointTable) -> npt.NDArray[np.float64]:
        return table.inflight_tokens if self.tokens else table.inflight_requests

    def saturation(self, table: EndpointTable, candidates: SlotArray, now: float) -> float:
        if len(candidates) == 0:
            return 1.0
        return float(self._inflight(table).take(candidates).sum() / (self.capacity * len(candidates)))

    def filter(self, state: CycleState, candidates: SlotArray) -> SlotArray:
        return candidates[self._inflight(state.table).take(candidates) < self.limit]
