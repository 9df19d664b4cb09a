"""The scheduling framework: per profile filters → scorers (Σ weight · clamp(score, 0, 1)) → picker.

Built once from an EndpointPickerConfig; every list of plugins is resolved at build time so a request
costs the plugins' own work. Data producers (e.g. the prefix index) run before the profiles; plugins with
a pre-request hook (epp/scheduling/plugin.py declares the optional hooks) run after the pick, and producers
again at completion.

The profile handler decides which profiles run. With one profile and a handler that keeps the
single-profile behaviour (the default), `schedule` runs that profile inline (the per-request fast path);
otherwise it loops: the handler names the next profiles given the results so far, each runs on the same
candidates with the shared cycle state, and the handler builds the result (e.g. prefill/decode, with the
decode profile primary).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from epp.config.schema import EndpointPickerConfig, PluginInstance
from epp.datastore.table import EndpointTable, SlotArray
from epp.observability.extension import plugin_duration
from epp.observability.families import Distribution
from epp.scheduling.plugin import (
    ConnectsPlugins,
    ConsumesProducer,
    CycleState,
    DataProducer,
    Filter,
    Picker,
    Plugin,
    PreRequestHook,
    ProfileHandler,
    SaturationDetector,
    Scorer,
)
from epp.scheduling.registry import default_instance
from epp.scheduling.types import (
    LLMRequest,
    ProfilePlan,
    ProfileResult,
    ProfileTrace,
    SchedulingError,
    SchedulingResult,
    Usage,
)

NO_ENDPOINTS = "no endpoints available for the given request"


def _timer(extension_point: str, plugin: Plugin) -> Distribution:
    return plugin_duration(extension_point, plugin.type_name, plugin.name)


def _overriding(producers: list[DataProducer], hook: str) -> list[DataProducer]:
    """The producers that override `hook` (the base's does nothing, so it need not be called)."""
    base = getattr(DataProducer, hook)
    return [p for p in producers if getattr(type(p), hook) is not base]


class _Profile:
    """One profile's plugins, each with its `plugin_duration_seconds` child resolved once."""

    def __init__(self, name: str, filters: list[Filter], scorers: list[tuple[Scorer, float]], picker: Picker) -> None:
        self.name = name
        self.filters = [(f, _timer("Filter", f)) for f in filters]
        self.scorers = [(s, float(w), s.bounded, _timer("Scorer", s)) for s, w in scorers]
        self.picker = picker
        self.picker_timer = _timer("Picker", picker)
        self.plan = ProfilePlan(
            name,
            tuple((f.name, f.type_name) for f in filters),
            tuple((s.name, s.type_name, float(w)) for s, w in scorers),
            (picker.name, picker.type_name),
        )

    def run(self, state: CycleState, candidates: SlotArray, trace: bool = False) -> ProfileResult:
        """Filter, score, pick; with `trace`, the result (or the SchedulingError) carries the arrays it
        computed, by reference."""
        clock = time.perf_counter
        started = clock()
        record = ProfileTrace(self.plan, candidates, [], candidates) if trace else None
        for plugin, timer in self.filters:
            candidates = plugin.filter(state, candidates)
            now = clock()
            timer.observe(now - started)
            started = now
            if record is not None:
                record.kept.append(candidates)
            if len(candidates) == 0:
                raise SchedulingError(NO_ENDPOINTS, record)
        total = None
        borrowed = False  # `total` is a scorer's own array (a first weight of 1): the next sum makes a new one
        for scorer, weight, bounded, timer in self.scorers:
            scores = scorer.score(state, candidates)
            if not bounded:
                scores = np.minimum(np.maximum(scores, 0.0), 1.0)
            weighted = scores if weight == 1.0 else weight * scores
            if total is None:
                total, borrowed = weighted, weighted is scores
            elif borrowed:
                total, borrowed = total + weighted, False
            else:
                total += weighted
            if record is not None:
                record.scores.append(scores)
            now = clock()
            timer.observe(now - started)
            started = now
        if total is None:
            total = np.zeros(len(candidates))
        picked = self.picker.pick(state, candidates, total)
        self.picker_timer.observe(clock() - started)
        if record is not None:
            record.candidates, record.total = candidates, total
        return ProfileResult(picked, trace=record)


def _consumed_first(producers: list[DataProducer]) -> list[DataProducer]:
    """Producers in declaration order, except that one another producer consumes runs before it."""
    consumed = {p.consumes for p in producers if isinstance(p, ConsumesProducer)}
    return sorted(producers, key=lambda p: p.type_name not in consumed)


def _keeps_single_profile(handler: ProfileHandler | None) -> bool:
    if handler is None:
        return True
    cls = type(handler)
    return cls.pick_profiles is ProfileHandler.pick_profiles and cls.process_results is ProfileHandler.process_results


class SchedulerRuntime:
    """Implements the Scheduler and RequestHooks protocols of epp.scheduling.types."""

    def __init__(self, config: EndpointPickerConfig, table: EndpointTable) -> None:
        self.config = config
        self.table = table
        plugins = dict(config.plugins)
        # Producers consumed by plugins but not declared are created with default parameters.
        for instance in list(plugins.values()):
            consumer = instance.plugin
            if isinstance(consumer, ConsumesProducer) and not any(
                p.type == consumer.consumes for p in plugins.values()
            ):
                consumed = consumer.consumes
                plugins[consumed] = PluginInstance(consumed, consumed, default_instance(consumed))
        self.plugins: dict[str, Plugin] = {name: instance.plugin for name, instance in plugins.items()}
        self.producers = _consumed_first([p for p in self.plugins.values() if isinstance(p, DataProducer)])
        self._producer_timers = [(p, _timer("DataProducer", p)) for p in self.producers]
        for plugin in self.plugins.values():
            plugin.bind(table)
            if isinstance(plugin, ConnectsPlugins):
                plugin.connect(self.plugins)
        # Hooks after the pick: producers first (they learn from it), then any other plugin offering one.
        self._picked = [p.picked for p in _overriding(self.producers, "picked")]
        self._first_response = [p.first_response for p in _overriding(self.producers, "first_response")]
        self._response_chunk = [p.response_chunk for p in _overriding(self.producers, "response_chunk")]
        self._pre_request: list[Callable[[CycleState, SchedulingResult], None]] = [
            p.pre_request for p in _overriding(self.producers, "pre_request")
        ]
        self._pre_request += [
            p.pre_request
            for p in self.plugins.values()
            if not isinstance(p, DataProducer) and isinstance(p, PreRequestHook)
        ]
        self._response_complete = [p.response_complete for p in _overriding(self.producers, "response_complete")]
        self.profiles: dict[str, _Profile] = {}
        for profile in config.profiles:
            filters: list[Filter] = []
            scorers: list[tuple[Scorer, float]] = []
            picker: Picker | None = None
            for entry in profile.entries:
                plugin = self.plugins[entry.ref]
                if isinstance(plugin, Filter):
                    filters.append(plugin)
                elif isinstance(plugin, Scorer):
                    scorers.append((plugin, entry.weight))
                elif isinstance(plugin, Picker):
                    picker = plugin
            assert picker is not None, "config defaulting guarantees a picker per profile"
            self.profiles[profile.name] = _Profile(profile.name, filters, scorers, picker)
        self.profile_names = list(self.profiles)
        handlers = [p for p in self.plugins.values() if isinstance(p, ProfileHandler)]
        self.handler: ProfileHandler | None = handlers[0] if handlers else None
        #: the profile `schedule` runs inline, or None when the handler drives a profile loop
        self.profile: _Profile | None = None
        if len(self.profiles) == 1 and _keeps_single_profile(self.handler):
            self.profile = next(iter(self.profiles.values()))
        elif self.handler is None:
            raise ValueError(f"{len(self.profiles)} scheduling profiles need a profile handler")
        detector = plugins.get(config.saturation_detector)
        self._detector = (
            detector.plugin if detector is not None and isinstance(detector.plugin, SaturationDetector) else None
        )
        #: keep each profile run's arrays on its result (for /debug/decisions and --emit-endpoint-scores)
        self.trace = False

    # --- Scheduler ----------------------------------------------------------------------------

    def schedule(self, request: LLMRequest, table: EndpointTable, candidates: SlotArray) -> SchedulingResult:
        state = CycleState(request, table)
        clock = time.perf_counter
        started = clock()
        for producer, timer in self._producer_timers:
            producer.produce(state, candidates)
            now = clock()
            timer.observe(now - started)
            started = now
        profile = self.profile
        if profile is not None:
            result = SchedulingResult({profile.name: profile.run(state, candidates, self.trace)}, profile.name)
        else:
            result = self._run_profiles(state, candidates)
        for picked in self._picked:
            picked(state, result)
        if self._pre_request:
            result.cycle_state = state
        return result

    def _run_profiles(self, state: CycleState, candidates: SlotArray) -> SchedulingResult:
        handler = self.handler
        assert handler is not None
        results: dict[str, ProfileResult | None] = {}
        while True:
            names = [
                n for n in handler.pick_profiles(state, candidates, self.profile_names, results) if n not in results
            ]
            if not names:
                break
            for name in names:
                profile = self.profiles.get(name)
                if profile is None:
                    raise SchedulingError(f"profile handler {handler.name} asked for unknown profile {name!r}")
                try:
                    results[name] = profile.run(state, candidates, self.trace)
                except SchedulingError:
                    results[name] = None
        return handler.process_results(state, results)

    # --- RequestHooks --------------------------------------------------------------------------

    def pre_request(self, request: LLMRequest, result: SchedulingResult, table: EndpointTable) -> None:
        state = result.cycle_state
        if state is None:
            return
        result.cycle_state = None
        for hook in self._pre_request:
            hook(state, result)

    def first_response(self, request: LLMRequest, result: SchedulingResult, ttft: float | None) -> None:
        for hook in self._first_response:
            hook(request, result, ttft)

    def response_chunk(self, result: SchedulingResult) -> None:
        for hook in self._response_chunk:
            hook(result)

    def response_complete(
        self, request: LLMRequest, result: SchedulingResult, usage: Usage | None, table: EndpointTable
    ) -> None:
        for hook in self._response_complete:
            hook(request, result, usage)

    # --- admission -----------------------------------------------------------------------------

    def saturation(self, candidates: SlotArray) -> float:
        detector = self._detector
        if detector is None:
            return 0.0
        return detector.saturation(self.table, candidates, time.monotonic())


def build_scheduler(config: EndpointPickerConfig, table: EndpointTable) -> SchedulerRuntime:
    return SchedulerRuntime(config, table)
