"""The plugin contract: what a plugin is and every hook the framework calls on it.

A plugin is a small class with a registered type name, typed parameters with defaults, and one role (a base
class below: Filter, Scorer, Picker, ProfileHandler, DataProducer, Marker). Plugins register through the
`epp.plugins` entry-point group (in-tree ones too, see pyproject.toml), so a third-party package adds a scorer
the same way:

    class MyScorer(Scorer):
        type_name = "my-scorer"
        def score(self, state, candidates): return numpy array in [0, 1], one per candidate

    [project.entry-points."epp.plugins"]
    my-scorer = "my_package:MyScorer"

Beyond its role, a plugin may offer the optional hooks declared here as protocols (`ConsumesProducer`,
`ConnectsPlugins`, `PreRequestHook`, `SaturationDetector`); the framework finds them with isinstance() once,
when the scheduler is built. Plugins of one scheduling cycle share data through the `CycleState`, under typed
`StateKey`s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from epp.datastore.table import EndpointTable, SlotArray
from epp.scheduling.types import CycleState as CycleState
from epp.scheduling.types import LLMRequest, ProfileResult, SchedulingError, SchedulingResult, Usage
from epp.scheduling.types import StateKey as StateKey
from epp.units import unknown_keys

Scores = npt.NDArray[np.float64]
T = TypeVar("T")


class ParameterError(ValueError):
    pass


def parameter_mapping(raw: object, path: str, known: Collection[str], owner: str) -> Mapping[str, object]:
    """A plugin's raw parameters (`None` = none given) as a mapping whose keys are all `known`; anything else is
    a ParameterError naming the path and, for an unknown key, the known ones."""
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise ParameterError(f"{path}: expected a mapping of parameters, got {type(raw).__name__}")
    unknown = unknown_keys(raw, known)
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        raise ParameterError(f"{path}.{unknown[0]}: unknown parameter of {owner}; known: {listed}")
    return raw


def require_positive(name: str, value: float, what: str = "") -> None:
    """A Parameters.validate() check: `value` (the camelCase parameter `name`) above 0; `what` it counts."""
    if value <= 0:
        raise ValueError(
            f"{name} must be a positive {what}, got {value}" if what else f"{name} must be positive, got {value}"
        )


def require_non_negative(name: str, value: float, meaning_of_zero: str = "") -> None:
    """A Parameters.validate() check: `value` at least 0; `meaning_of_zero` said in the message when given."""
    if value < 0:
        note = f" ({meaning_of_zero})" if meaning_of_zero else ""
        raise ValueError(f"{name} must be >= 0{note}, got {value}")


@dataclass
class NoParameters:
    pass


class Plugin:
    type_name: ClassVar[str] = ""
    role: ClassVar[str] = ""
    Parameters: ClassVar[type] = NoParameters

    def __init__(self, name: str, parameters: object) -> None:
        self.name = name
        #: an instance of `Parameters` (a plugin that reads it declares its type: `self.parameters: P = parameters`)
        self.parameters = parameters

    @classmethod
    def parse_parameters(cls, raw: Mapping[str, object] | None, path: str) -> object:
        """camelCase YAML keys → the Parameters dataclass; wrong names and types name the path."""
        fields = {parameter_key(f): f for f in dataclasses.fields(cls.Parameters)}
        raw = parameter_mapping(raw, path, fields, cls.type_name)
        values: dict[str, object] = {}
        for key, value in raw.items():
            spec = fields[key]
            values[spec.name] = _coerce(value, spec, f"{path}.{key}")
        parameters: object = cls.Parameters(**values)
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

    def response_chunk(self, result: SchedulingResult) -> None:
        pass

    def response_complete(self, request: LLMRequest, result: SchedulingResult, usage: Usage | None) -> None:
        pass


class Marker(Plugin):
    """Plugins whose work happens outside the scheduler (parsers, data sources, detectors)."""

    role = "marker"


# --- optional hooks ------------------------------------------------------------------------------


@runtime_checkable
class ConsumesProducer(Protocol):
    """A plugin that reads what a data producer writes: `consumes` is that producer's type name. The scheduler
    runs that producer first, and creates it with default parameters when the config does not declare it."""

    consumes: str


@runtime_checkable
class ConnectsPlugins(Protocol):
    """A plugin that looks at the other plugins of its config once, when the scheduler is built (e.g. a decider
    that follows the prefix producer's block size)."""

    def connect(self, plugins: Mapping[str, Plugin]) -> None: ...


@runtime_checkable
class PreRequestHook(Protocol):
    """A plugin told of each pick once its response is on its way (every DataProducer is one)."""

    def pre_request(self, state: CycleState, result: SchedulingResult) -> None: ...


@runtime_checkable
class SaturationDetector(Protocol):
    """How saturated the pool is for admission: in [0, ∞), ≥ 1.0 saturated (named by the config's
    `saturationDetector`)."""

    def saturation(self, table: EndpointTable, candidates: SlotArray, now: float) -> float: ...


def parameter_key(spec: dataclasses.Field[object]) -> str:
    """The config key of a Parameters field: its camelCase name, or `metadata={"key": ...}` where the reference
    spells it otherwise (an acronym: maxTTFTPenaltyMs)."""
    key = spec.metadata.get("key")
    if isinstance(key, str):
        return key
    head, *rest = spec.name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _coerce(value: object, spec: dataclasses.Field[object], path: str) -> object:
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
