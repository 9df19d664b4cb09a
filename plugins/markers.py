"""Plugin types whose work happens outside the scheduling profiles: parsers, data layer, the single-profile
handler. Declaring them in a config selects or parameterises that behaviour (the saturation detectors are in
plugins/saturation.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from epp.datalayer.params import CoreMetricsExtractorParams, MetricsDataSourceParams
from epp.scheduling.plugin import Marker, ParameterError, ProfileHandler


class OpenAIParser(Marker):
    type_name = "openai-parser"


class PassthroughParser(Marker):
    type_name = "passthrough-parser"


class SingleProfileHandler(ProfileHandler):
    type_name = "single-profile-handler"


class _DataLayerMarker(Marker):
    """A data-layer plugin whose parameters are parsed by the data layer's own `from_dict`."""

    params: ClassVar[Any]

    @classmethod
    def parse_parameters(cls, raw: Mapping[str, Any] | None, path: str) -> Any:
        try:
            return cls.params.from_dict(raw or {}, path)
        except ValueError as exc:
            raise ParameterError(str(exc)) from None


class MetricsDataSource(_DataLayerMarker):
    type_name = "metrics-data-source"
    params = MetricsDataSourceParams


class CoreMetricsExtractor(_DataLayerMarker):
    type_name = "core-metrics-extractor"
    params = CoreMetricsExtractorParams
