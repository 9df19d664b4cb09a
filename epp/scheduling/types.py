"""What the director hands the scheduler and what it gets back.

The scheduler is pure: given a parsed request and candidate slots of the endpoint table it returns
ordered slots (primary first, then fallbacks). Everything here is plain data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from epp.datastore.table import EndpointTable, SlotArray

T = TypeVar("T")


class StateKey(Generic[T]):
    """The name of one kind of data plugins share, and its type: `MATCH = StateKey[PrefixMatch]("prefix")`."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"StateKey({self.name!r})"


@dataclass(slots=True)
class LLMRequest:
    """A parsed inference request as the scheduler and request-control plugins see it."""

    request_id: str
    #: model name as the client sent it (body "model")
    model: str
    #: model the request is sent to after rewrites (header x-gateway-model-name-rewrite or a rewrite rule)
    target_model: str
    #: lower-cased request headers (values as strings)
    headers: Mapping[str, str]
    #: "completions", "chat/completions", "responses", "conversations", "embeddings"; "" = no body or passthrough
    api: str = "completions"
    #: the bytes prefix-cache hashing runs over (completions: prompt text; chat: JSON of messages; ...)
    prompt_bytes: bytes = b""
    cache_salt: str = ""
    stream: bool = False
    priority: int = 0
    fairness_id: str = "default-flow"
    objective: str = ""
    #: size of the request body in bytes (token estimates derive from it)
    body_size: int = 0
    #: the parsed JSON body when there is one (read-only for plugins)
    body: Mapping[str, object] | None = None

    @property
    def estimated_input_tokens(self) -> int:
        return max(self.body_size // 4, 1)


@dataclass(frozen=True, slots=True)
class ProfilePlan:
    """A profile's plugins as a decision record names them: (name, type) of each filter and of the picker,
    (name, type, weight) of each scorer. Built once per profile."""

    name: str
    filters: tuple[tuple[str, str], ...]
    scorers: tuple[tuple[str, str, float], ...]
    picker: tuple[str, str]


@dataclass(slots=True)
class ProfileTrace:
    """What one run of a profile computed, kept by reference (no copy, no per-endpoint Python work on the
    hot path); /debug/decisions and the endpoint-scores metadata are built from it only when asked.

    `kept[i]` is the candidate array filter i returned (the input was `considered`); `candidates` the
    array the scorers scored; `scores[j]` scorer j's array after clamping to [0, 1], aligned with
    `candidates`; `total` Σ weight · score, the array the picker received."""

    plan: ProfilePlan
    considered: SlotArray
    kept: list[SlotArray]
    candidates: SlotArray
    scores: list[npt.NDArray[np.float64]] = field(default_factory=list)
    total: npt.NDArray[np.float64] | None = None


@dataclass
class CycleState:
    """Per-request state shared by the plugins of one scheduling cycle (a producer writes what scorers read)."""

    request: LLMRequest
    table: EndpointTable
    _values: dict[str, object] = field(default_factory=dict)

    def read(self, key: StateKey[T]) -> T | None:
        """What was written under `key` in this cycle, or None."""
        return self._values.get(key.name)  # type: ignore[return-value]  # write() stored a T (no cast: hot path)

    def write(self, key: StateKey[T], value: T) -> None:
        self._values[key.name] = value


@dataclass
class ProfileResult:
    #: picked slots, best first (length = the picker's maxNumOfEndpoints, or fewer)
    slots: SlotArray
    #: final scores of the picked slots, aligned with `slots`
    scores: npt.NDArray[np.float64] | None = None
    #: how the pick was made, when the scheduler traces (see SchedulerRuntime.trace)
    trace: ProfileTrace | None = None


@dataclass
class SchedulingResult:
    profile_results: dict[str, ProfileResult]
    primary_profile: str
    #: extra request headers to add upstream (e.g. x-prefiller-host-port from the disagg handler)
    headers: dict[str, str] = field(default_factory=dict)
    #: the profile whose pick prefills for the primary one (disaggregation), "" when none: the director charges
    #: its endpoint the prompt, and the prefix index learns the prompt there too
    prefill_profile: str = ""
    #: headers to add to the response the client gets (e.g. x-session-token from session-affinity-scorer);
    #: set by pre-request hooks, sent with the response headers
    response_headers: dict[str, str] | None = None
    #: the cycle state the pick was made with, kept for the pre-request hooks (which clear it); it rides
    #: on the result rather than in a table keyed by request id, which a client chooses and may repeat
    cycle_state: CycleState | None = None
    #: what plugins remember of this pick until the response ends (e.g. the predicted TTFT); see `remember`
    _notes: dict[str, object] = field(default_factory=dict)

    @property
    def primary(self) -> SlotArray:
        return self.profile_results[self.primary_profile].slots

    @property
    def prefill(self) -> ProfileResult | None:
        """The prefill profile's pick of a disaggregated request, if it picked an endpoint."""
        result = self.profile_results.get(self.prefill_profile) if self.prefill_profile else None
        return result if result is not None and len(result.slots) else None

    def remember(self, key: StateKey[T], value: T) -> None:
        """Keep `value` with this pick until its response ends (hooks after the pick `recall` it)."""
        self._notes[key.name] = value

    def recall(self, key: StateKey[T]) -> T | None:
        return self._notes.get(key.name)  # type: ignore[return-value]  # remember() stored a T


class SchedulingError(Exception):
    """No endpoint could be picked (all filtered out); the director answers 429."""

    def __init__(self, message: str, trace: ProfileTrace | None = None) -> None:
        super().__init__(message)
        #: the run that found nothing (which filter emptied the candidates), when the scheduler traces
        self.trace = trace


class Scheduler(Protocol):
    def schedule(self, request: LLMRequest, table: EndpointTable, candidates: SlotArray) -> SchedulingResult:
        """Pick endpoints among `candidates` (non-empty slot array). Raises SchedulingError."""
        ...


@dataclass
class Usage:
    """Token usage read from a model server's response (JSON `usage` or the SSE chunk carrying it)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    #: whether the server reported its cached tokens at all (vLLM does only with --enable-prompt-tokens-details)
    cached_reported: bool = False


class RequestHooks(Protocol):
    """Request-control points around the pick; the scheduling framework implements them for its plugins."""

    def pre_request(self, request: LLMRequest, result: SchedulingResult, table: EndpointTable) -> None:
        """Runs right after a pick, before the request goes upstream (prefix index insert, in-flight accounting)."""
        ...

    def first_response(self, request: LLMRequest, result: SchedulingResult, ttft: float | None) -> None:
        """Runs once when the first chunk of the response body arrives; `ttft` is the seconds since the pick
        when the response is streamed (its first chunk carries the first token), else None."""
        ...

    def response_chunk(self, result: SchedulingResult) -> None:
        """Runs at each chunk of a streamed response body after the first: the engine ended a step then (its
        decode steps emit the running requests' tokens at step boundaries)."""
        ...

    def response_complete(
        self, request: LLMRequest, result: SchedulingResult, usage: Usage | None, table: EndpointTable
    ) -> None:
        """Runs once when the response ends, or when the stream ends without one (client gone)."""
        ...
