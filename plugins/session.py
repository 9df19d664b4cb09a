"""`session-affinity-scorer`: 1 for the endpoint the request's session is pinned to, 0 for the others.

Strategies:
- `encoded_endpoint_header` (default, stateless): request header `x-session-token` carries the base64 of
  the endpoint's key (its name, or ip:port when it has none); after the pick the token of the primary
  endpoint goes back on the response headers. Clients treat the token as opaque and echo it.
- `session_id` (stateful): the session identifier is the first non-empty source header (default
  `x-session-id`); the scorer remembers session → endpoint. A session is bound on its first pick, refreshed
  while it lands on its endpoint, and moved only when its endpoint was not among the candidates. Bindings
  unused for evictionTtlSeconds are dropped (checked every evictionSweepSeconds, oldest first).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from epp.datastore.table import SlotArray
from epp.scheduling.plugin import CycleState, ParameterError, Scorer, Scores, parameter_mapping
from epp.scheduling.types import SchedulingResult, StateKey
from epp.units import unknown_keys

TOKEN_HEADER = "x-session-token"
SESSION_ID_HEADER = "x-session-id"
STRATEGIES = ("encoded_endpoint_header", "session_id")


def _default_session_id_config() -> dict[str, Any]:
    return {"sources": [{"header": SESSION_ID_HEADER}], "evictionTtlSeconds": 300.0, "evictionSweepSeconds": 10.0}


@dataclass
class SessionParameters:
    strategy: str = "encoded_endpoint_header"
    #: {sources: [{header: NAME}, ...] (first non-empty wins), evictionTtlSeconds, evictionSweepSeconds}
    session_id_config: dict[str, Any] = field(default_factory=_default_session_id_config)


def _number(raw: Mapping[str, Any], key: str, default: float, path: str) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ParameterError(f"{path}.{key}: expected a positive number of seconds, got {value!r}")
    return float(value)


def encode_token(key: str) -> str:
    return base64.b64encode(key.encode()).decode("ascii")


def decode_token(token: str) -> str | None:
    try:
        return base64.b64decode(token.encode("ascii"), validate=True).decode()
    except (binascii.Error, UnicodeError):
        return None


class SessionAffinityScorer(Scorer):
    type_name = "session-affinity-scorer"
    Parameters = SessionParameters

    @classmethod
    def parse_parameters(cls, raw: Mapping[str, Any] | None, path: str) -> SessionParameters:
        raw = parameter_mapping(raw, path, ("strategy", "sessionIdConfig"), cls.type_name)
        strategy = raw.get("strategy", "encoded_endpoint_header")
        if strategy not in STRATEGIES:
            raise ParameterError(f"{path}.strategy: expected {' or '.join(STRATEGIES)}, got {strategy!r}")
        config = raw.get("sessionIdConfig") or {}
        where = f"{path}.sessionIdConfig"
        if not isinstance(config, Mapping):
            raise ParameterError(f"{where}: expected a mapping with sources, evictionTtlSeconds, evictionSweepSeconds")
        unknown = unknown_keys(config, ("sources", "evictionTtlSeconds", "evictionSweepSeconds"))
        if unknown:
            raise ParameterError(
                f"{where}.{unknown[0]}: unknown field; valid: evictionSweepSeconds, evictionTtlSeconds, sources"
            )
        headers: list[str] = []
        sources = config.get("sources") or [{"header": SESSION_ID_HEADER}]
        if not isinstance(sources, list):
            raise ParameterError(f"{where}.sources: expected a list of {{header: NAME}}")
        for i, source in enumerate(sources):
            if not isinstance(source, Mapping) or set(source) != {"header"} or not isinstance(source["header"], str):
                raise ParameterError(
                    f"{where}.sources[{i}]: expected {{header: NAME}} (request attributes are not produced here)"
                )
            headers.append(source["header"].strip().lower())
        ttl = _number(config, "evictionTtlSeconds", 300.0, where)
        sweep = _number(config, "evictionSweepSeconds", 10.0, where)
        sources = [{"header": header} for header in headers]
        return SessionParameters(
            strategy, {"sources": sources, "evictionTtlSeconds": ttl, "evictionSweepSeconds": sweep}
        )

    def __init__(self, name: str, parameters: SessionParameters) -> None:
        super().__init__(name, parameters)
        self.by_session_id = parameters.strategy == "session_id"
        config = parameters.session_id_config
        self.headers: list[str] = [source["header"] for source in config["sources"]]
        self.ttl = float(config["evictionTtlSeconds"])
        self.sweep_every = float(config["evictionSweepSeconds"])
        #: session id → (endpoint key, last use), least recently used first
        self.bindings: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.clock: Callable[[], float] = time.monotonic
        self._next_sweep = 0.0
        self._absent_key: StateKey[bool] = StateKey(f"{self.type_name}/{name}/bound-endpoint-absent")

    # --- scoring ----------------------------------------------------------------------------------

    def _session_id(self, headers: Mapping[str, str]) -> str:
        for name in self.headers:
            value = headers.get(name, "").strip()
            if value:
                return value
        return ""

    def _pinned_key(self, state: CycleState) -> str | None:
        headers = state.request.headers
        if not self.by_session_id:
            token = headers.get(TOKEN_HEADER, "")
            return decode_token(token) if token else None
        session = self._session_id(headers)
        binding = self.bindings.get(session) if session else None
        return binding[0] if binding is not None else None

    def score(self, state: CycleState, candidates: SlotArray) -> Scores:
        key = self._pinned_key(state)
        slot = state.table.slot_of(key) if key is not None else None
        if slot is None:
            if key is not None and self.by_session_id:
                state.write(self._absent_key, True)
            return np.zeros(len(candidates))
        result: Scores = (candidates == slot).astype(np.float64)
        if self.by_session_id:
            state.write(self._absent_key, not result.any())
        return result

    # --- after the pick -----------------------------------------------------------------------------

    def pre_request(self, state: CycleState, result: SchedulingResult) -> None:
        primary = result.primary
        if not len(primary):
            return
        key = state.table.endpoint(int(primary[0])).key
        if not self.by_session_id:
            if result.response_headers is None:
                result.response_headers = {}
            result.response_headers[TOKEN_HEADER] = encode_token(key)
            return
        now = self.clock()
        if now >= self._next_sweep:
            self._sweep(now)
        session = self._session_id(state.request.headers)
        if not session:
            return
        bound = self.bindings.get(session)
        if bound is None or bound[0] == key or state.read(self._absent_key):
            self.bindings[session] = (key, now)
            self.bindings.move_to_end(session)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self.sweep_every
        bindings = self.bindings
        while bindings:
            session, (_, last_use) = next(iter(bindings.items()))
            if now - last_use <= self.ttl:
                break
            del bindings[session]
