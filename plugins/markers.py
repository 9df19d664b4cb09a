"""Plugin types whose work happens outside the scheduling profiles: parsers, data layer, detectors,
the single-profile handler. Declaring them in a config selects or parameterises that behaviour."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from epp.datalayer.params import CoreMetricsExtractorParams, MetricsDataSourceParams
from epp.datastore.table import EndpointTable, SlotArray
from epp.scheduling.plugin import Marker, ParameterError, ProfileHandler


class OpenAIParser(Marker):
    type_name = "openai-parser"


class PassthroughParser(Marker):
    type_name = "passthrough-parser"


class SingleProfileHandler(ProfileHandler):
    type_name = "single-profile-handler"


class MetricsDataSource(Marker):
    type_name = "metrics-data-source"

    @classmethod
    def parse_parameters(cls, raw: Mapping[str, Any] | None, path: str) -> Any:
        try:
            return MetricsDataSourceParams.from_dict(raw or {}, path)
        except ValueError as exc:
            raise ParameterError(str(exc)) from None


class CoreMetricsExtractor(Marker):
    type_name = "core-metrics-extractor"

    @classmethod
    def parse_parameters(cls, raw: Mapping[str, Any] | None, path: str) -> Any:
        try:
            return CoreMetricsExtractorParams.from_dict(raw or {}, path)
        except ValueError as exc:
            raise ParameterError(str(exc)) from None


@dataclass
class UtilizationParameters:
    queue_depth_threshold: int = 5
    kv_cache_util_threshold: float = 0.8
    metrics_staleness_threshold: str = "200ms"
    headroom: float = 0.0

    def validate(self) -> None:
        if self.queue_depth_threshold <= 0:
            raise ValueError(f"queueDepthThreshold must be positive, got {self.queue_depth_threshold}")
        if not 0 < self.kv_cache_util_threshold <= 1:
            raise ValueError(f"kvCacheUtilThreshold must be in (0, 1], got {self.kv_cache_util_threshold}")
        from epp.cli import parse_duration

        parse_duration(self.metrics_staleness_threshold)


class UtilizationDetector(Marker):
    """Per endpoint max(queue / Q, kv / KV); stale or never-scraped endpoints count as 1.0; pool = mean."""

    type_name = "utilization-detector"
    Parameters = UtilizationParameters

    def __init__(self, name: str, parameters: UtilizationParameters) -> None:
        super().__init__(name, parameters)
        from epp.cli import parse_duration

        self.q = float(parameters.queue_depth_threshold)
        self.kv = parameters.kv_cache_util_threshold
        self.staleness = parse_duration(parameters.metrics_staleness_threshold)

    def saturation(self, table: EndpointTable, candidates: SlotArray, now: float) -> float:
        if len(candidates) == 0:
            return 1.0
        per_endpoint = np.maximum(
            table.waiting_queue.take(candidates) / self.q, table.kv_usage.take(candidates) / self.kv
        )
        scraped = table.metrics_time.take(candidates)
        stale = (scraped == 0) | (now - scraped > self.staleness)
        per_endpoint[stale] = 1.0
        return float(per_endpoint.mean())
