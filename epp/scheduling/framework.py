"""The scheduling framework: per profile filters → scorers (Σ weight · clamp(score, 0, 1)) → picker.

Built once from an EndpointPickerConfig; every list of plugins is resolved at build time so a request
costs the plugins' own work. Data producers (e.g. the prefix index) run before the profile and again
after the pick (pre-request) and at completion.
"""

from __future__ import annotations

import time

import numpy as np

from epp.config.schema import EndpointPickerConfig, PluginInstance
from epp.datastore.table import EndpointTable, SlotArray
from epp.scheduling.plugin import CycleState, DataProducer, Filter, Picker, Scorer
from epp.scheduling.registry import plugin_types
from epp.scheduling.types import LLMRequest, ProfileResult, SchedulingError, SchedulingResult, Usage


class _Profile:
    def __init__(self, name: str, filters: list[Filter], scorers: list[tuple[Scorer, float]], picker: Picker) -> None:
        self.name = name
        self.filters = filters
        self.scorers = scorers
        self.picker = picker


class SchedulerRuntime:
    """Implements the Scheduler and RequestHooks protocols of epp.scheduling.types."""

    def __init__(self, config: EndpointPickerConfig, table: EndpointTable) -> None:
        self.config = config
        self.table = table
        plugins = dict(config.plugins)
        # Producers consumed by scorers but not declared are created with default parameters.
        types = plugin_types()
        for instance in list(plugins.values()):
            consumed = getattr(instance.plugin, "consumes", None)
            if consumed and not any(p.type == consumed for p in plugins.values()):
                cls = types[consumed]
                plugins[consumed] = PluginInstance(consumed, consumed, cls(consumed, cls.parse_parameters({}, "")))
        self.producers = [p.plugin for p in plugins.values() if isinstance(p.plugin, DataProducer)]
        for instance in plugins.values():
            instance.plugin.bind(table)
        profile = config.profiles[0]
        filters: list[Filter] = []
        scorers: list[tuple[Scorer, float]] = []
        picker: Picker | None = None
        for entry in profile.entries:
            plugin = plugins[entry.ref].plugin
            if isinstance(plugin, Filter):
                filters.append(plugin)
            elif isinstance(plugin, Scorer):
                scorers.append((plugin, entry.weight))
            elif isinstance(plugin, Picker):
                picker = plugin
        assert picker is not None, "config defaulting guarantees a picker per profile"
        self.profile = _Profile(profile.name, filters, scorers, picker)
        detector = plugins.get(config.saturation_detector)
        self._detector = detector.plugin if detector is not None else None
        self._states: dict[str, CycleState] = {}

    # --- Scheduler ----------------------------------------------------------------------------

    def schedule(self, request: LLMRequest, table: EndpointTable, candidates: SlotArray) -> SchedulingResult:
        state = CycleState(request, table)
        for producer in self.producers:
            producer.produce(state, candidates)
        profile = self.profile
        for plugin in profile.filters:
            candidates = plugin.filter(state, candidates)
            if len(candidates) == 0:
                raise SchedulingError("no endpoints available for the given request")
        total = np.zeros(len(candidates))
        for scorer, weight in profile.scorers:
            total += weight * np.clip(scorer.score(state, candidates), 0.0, 1.0)
        picked = profile.picker.pick(state, candidates, total)
        if self.producers:
            self._states[request.request_id] = state
        return SchedulingResult({profile.name: ProfileResult(picked)}, profile.name)

    # --- RequestHooks --------------------------------------------------------------------------

    def pre_request(self, request: LLMRequest, result: SchedulingResult, table: EndpointTable) -> None:
        state = self._states.pop(request.request_id, None)
        if state is None:
            return
        for producer in self.producers:
            producer.pre_request(state, result)

    def response_complete(
        self, request: LLMRequest, result: SchedulingResult, usage: Usage | None, table: EndpointTable
    ) -> None:
        for producer in self.producers:
            producer.response_complete(request, result, usage)

    # --- admission -----------------------------------------------------------------------------

    def saturation(self, candidates: SlotArray) -> float:
        detector = self._detector
        if detector is None or not hasattr(detector, "saturation"):
            return 0.0
        value: float = detector.saturation(self.table, candidates, time.monotonic())
        return value


def build_scheduler(config: EndpointPickerConfig, table: EndpointTable) -> SchedulerRuntime:
    return SchedulerRuntime(config, table)
