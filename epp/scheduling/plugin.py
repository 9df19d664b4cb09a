"""What a plugin is: a small class with a registered type name, typed parameters with defaults, one role.

Plugins register through the `epp.plugins` entry-point group (in-tree ones too, see pyproject.toml), so a
third-party package adds a scorer the same way:

    class MyScorer(Scorer):
        type_name = "my-scorer"
        def score(self, ctx, candidates): return numpy array in [0, 1], one per candidate

    [project.entry-points."epp.plugins"]
    my-scorer = "my_package:MyScorer"
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from epp.datastore.table import EndpointTable, SlotArray
from epp.scheduling.types import LLMRequest, ProfileResult, SchedulingError, SchedulingResult, Usage

Scores = npt.NDArray[np.float64]


class ParameterError(ValueError):
    pass


@dataclass
class NoParameters:
    pass


@dataclass
class CycleState:
    """Per-request state shared by the plugins of one scheduling cycle."""

    request: LLMRequest
    table: EndpointTable
    data: dict[str, Any] = field(default_factory=dict)


class Plugin:
    type_name: ClassVar[str] = ""
    role: ClassVar[str] = ""
    Parameters: ClassVar[type] = NoParameters

    def __init__(self, name: str, parameters: Any) -> None:
        self.name = name
        self.parameters = parameters

    @classmethod
    def parse_parameters(cls, raw: Mapping[str, Any] | None, path: str) -> Any:
        """camelCase YAML keys → the Parameters dataclass; wrong names and types name the path."""
        raw = raw or {}
        if not isinstance(raw, Mapping):
            raise ParameterError(f"{path}: expected a mapping of parameters, got {type(raw).__name__}")
        fields = {_camel(f.name): f for f in dataclasses.fields(cls.Parameters)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            known = ", ".join(sorted(fields)) or "none"
            raise ParameterError(f"{path}.{unknown[0]}: unknown parameter of {cls.type_name}; known: {known}")
        values: dict[str, Any] = {}
        for key, value in raw.items():
            spec = fields[key]
            values[spec.name] = _coerce(value, spec, f"{path}.{key}")
        parameters = cls.Parameters(**values)
        check = getattr(parameters, "validate", None)
        if check is not None:
            try:
                check()
            except ValueError as exc:
                raise ParameterError(f"{path}: {exc}") from None
        return parameters

    def bind(self, table: EndpointTable) -> None:
        """Called once when the scheduler is built (e.g. to subscribe to membership changes)."""


class Filter(Plugin):
    """`filter` returns the kept candidates as an array it never writes again (kept for /debug/decisions)."""

    role = "filter"

    def filter(self, state: CycleState, candidates: SlotArray) -> SlotArray:
        raise NotImplementedError


class Scorer(Plugin):
    """`score` returns one float per candidate in a new array (or one it never writes again): the framework
    keeps it with the pick for /debug/decisions."""

    role = "scorer"
    #: True when every score is in [0, 1] by construction, so the framework need not clamp it
    bounded = False

    def score(self, state: CycleState, candidates: SlotArray) -> Scores:
        raise NotImplementedError


class Picker(Plugin):
    """`pick` reads `scores` without changing them (/debug/decisions shows them as the picker got them)."""

    role = "picker"

    def pick(self, state: CycleState, candidates: SlotArray, scores: Scores) -> SlotArray:
        raise NotImplementedError


class ProfileHandler(Plugin):
    """Chooses which scheduling profiles run for a request and builds the result from theirs.

    The defaults are the single-profile handler's: every profile runs once, exactly one result is required
    and its profile is primary. A handler that keeps both `pick_profiles` and `process_results` as they are
    gets the framework's single-profile fast path.
    """

    role = "profile-handler"

    def resolve(self, profiles: Sequence[str], plugins: Mapping[str, Plugin]) -> list[tuple[str, str]]:
        """Bind references to profiles and plugins by name when the config loads.

        Returns the problems as (field under the plugin, message), e.g. ("parameters.deciders.prefill", ...);
        an empty field means the plugin as a whole.
        """
        if len(profiles) != 1:
            declared = ", ".join(profiles) or "none"
            message = f"{self.type_name} runs exactly one profile but {len(profiles)} are declared ({declared})"
            return [("", message + "; use a multi-profile handler such as disagg-profile-handler")]
        return []

    def pick_profiles(
        self,
        state: CycleState,
        candidates: SlotArray,
        profiles: Sequence[str],
        results: Mapping[str, ProfileResult | None],
    ) -> list[str]:
        """Names of the profiles to run next, given the results so far (None = that profile found nothing).

        An empty list ends the loop; names already in `results` are not run again.
        """
        return [name for name in profiles if name not in results]

    def process_results(self, state: CycleState, results: Mapping[str, ProfileResult | None]) -> SchedulingResult:
        """The routing result: which profile is primary, and any headers the pick adds upstream."""
        if len(results) != 1:
            raise SchedulingError(f"{self.type_name} expects one profile result, got {len(results)}")
        ((name, result),) = results.items()
        if result is None:
            raise SchedulingError("no endpoints available for the given request")
        return SchedulingResult({name: result}, name)


class DataProducer(Plugin):
    """Runs before the profiles (prepare data), right after the pick (`picked`, inside the decision, for load
    the next decision must see), after the pick's response is sent (pre-request), when the first response
    chunk arrives and at completion."""

    role = "producer"

    def produce(self, state: CycleState, candidates: SlotArray) -> None:
        pass

    def picked(self, state: CycleState, result: SchedulingResult) -> None:
        pass

    def pre_request(self, state: CycleState, result: SchedulingResult) -> None:
        pass

    def first_response(self, request: LLMRequest, result: SchedulingResult, ttft: float | None) -> None:
        pass

    def response_complete(self, request: LLMRequest, result: SchedulingResult, usage: Usage | None) -> None:
        pass


class Marker(Plugin):
    """Plugins whose work happens outside the scheduler (parsers, data sources, detectors)."""

    role = "marker"


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _coerce(value: Any, spec: dataclasses.Field[Any], path: str) -> Any:
    kind = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", str(spec.type))
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ParameterError(f"{path}: expected true or false, got {value!r}")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ParameterError(f"{path}: expected an integer, got {value!r}")
    if kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ParameterError(f"{path}: expected a number, got {value!r}")
    if kind == "str":
        if isinstance(value, str):
            return value
        raise ParameterError(f"{path}: expected a string, got {value!r}")
    return value
