"""Prefill/decode disaggregation: the `disagg-profile-handler` and its deciders.

The handler runs the decode profile first. If that found an endpoint and a prefill decider is configured
and approves (given the decode pick), the prefill profile runs too. The decode profile is primary (the
request goes to the decode endpoint); a prefill pick adds request header `x-prefiller-host-port: ip:port`
for the decode pod's sidecar, and the prefix index also learns the prefix on the prefill endpoint.

Parameters (names as the reference): `profiles: {decode: "decode", prefill: "prefill"}`,
`deciders: {prefill: <decider plugin name>}`; the older flat form `decodeProfile`, `prefillProfile`,
`prefillDeciderPluginName` (or `deciderPluginName`) is accepted too, but not mixed with the nested one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from epp.datastore.table import EndpointTable, SlotArray
from epp.plugins.prefix import STATE_KEY, ApproxPrefixCacheProducer, PrefixParameters
from epp.scheduling.plugin import (
    CycleState,
    ParameterError,
    Plugin,
    ProfileHandler,
    parameter_mapping,
    require_non_negative,
)
from epp.scheduling.types import ProfileResult, SchedulingError, SchedulingResult

PREFILLER_HEADER = "x-prefiller-host-port"
#: characters per token when estimating a prompt's length (as the prefix index does)
CHARS_PER_TOKEN = 4


class PDDecider(Plugin):
    """Decides whether a request, already placed on a decode endpoint, also gets a separate prefill."""

    role = "decider"

    def disaggregate(self, state: CycleState, decode_slot: int, candidates: SlotArray) -> bool:
        raise NotImplementedError


class AlwaysDisaggPDDecider(PDDecider):
    type_name = "always-disagg-pd-decider"

    def disaggregate(self, state: CycleState, decode_slot: int, candidates: SlotArray) -> bool:
        return True


@dataclass
class PrefixDeciderParameters:
    non_cached_tokens: int = 0
    prompt_tokens: int = 0

    def validate(self) -> None:
        require_non_negative("nonCachedTokens", self.non_cached_tokens, "0 disables disaggregation")
        require_non_negative("promptTokens", self.prompt_tokens, "0 = no minimum prompt length")


class PrefixBasedPDDecider(PDDecider):
    """Disaggregate iff nonCachedTokens > 0 and the prompt's tokens not cached on the decode endpoint reach it.

    prompt tokens = prompt bytes // 4; cached tokens = leading prefix blocks the decode endpoint holds ·
    block size in tokens (the prefix producer's: the served cache block size with autoTune, else
    blockSizeTokens); uncached = prompt - cached. Prompts shorter than nonCachedTokens or promptTokens, and
    requests without prefix information, stay on the decode endpoint.
    """

    type_name = "prefix-based-pd-decider"
    Parameters = PrefixDeciderParameters
    consumes = ApproxPrefixCacheProducer.type_name

    def __init__(self, name: str, parameters: PrefixDeciderParameters) -> None:
        super().__init__(name, parameters)
        self.threshold = parameters.non_cached_tokens
        self.minimum_prompt = max(parameters.non_cached_tokens, parameters.prompt_tokens)
        self.prefix = PrefixParameters()

    def connect(self, plugins: Mapping[str, Plugin]) -> None:
        """Block size and auto-tuning follow the prefix producer the scheduler runs."""
        for plugin in plugins.values():
            if isinstance(plugin, ApproxPrefixCacheProducer):
                self.prefix = plugin.parameters
                return

    def block_tokens(self, table: EndpointTable, candidates: SlotArray) -> int:
        if self.prefix.auto_tune and len(candidates):
            served = int(table.cache_block_size[candidates[0]])
            if served > 0:
                return served
        return self.prefix.block_size_tokens

    def disaggregate(self, state: CycleState, decode_slot: int, candidates: SlotArray) -> bool:
        if self.threshold == 0:
            return False
        prompt = len(state.request.prompt_bytes) // CHARS_PER_TOKEN
        if prompt < self.minimum_prompt:
            return False
        match = state.read(STATE_KEY)
        if match is None:
            return False
        matched = 0
        if match.total_blocks:
            matched = int(match.matched_blocks(np.array([decode_slot], dtype=np.intp))[0])
        cached = matched * self.block_tokens(state.table, candidates)
        return prompt - cached >= self.threshold


_NESTED = {"profiles": ("decode", "prefill"), "deciders": ("prefill",)}
_FLAT = {
    "decodeProfile": ("profiles", "decode"),
    "prefillProfile": ("profiles", "prefill"),
    "prefillDeciderPluginName": ("deciders", "prefill"),
    "deciderPluginName": ("deciders", "prefill"),
}


@dataclass
class DisaggParameters:
    profiles: dict[str, str] = field(default_factory=lambda: {"decode": "decode", "prefill": "prefill"})
    deciders: dict[str, str] = field(default_factory=dict)


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ParameterError(f"{path}: expected a non-empty string, got {value!r}")
    return value


class DisaggProfileHandler(ProfileHandler):
    type_name = "disagg-profile-handler"
    Parameters = DisaggParameters

    @classmethod
    def parse_parameters(cls, raw: Mapping[str, Any] | None, path: str) -> DisaggParameters:
        raw = parameter_mapping(raw, path, [*_NESTED, *_FLAT], cls.type_name)
        nested = [k for k in raw if k in _NESTED]
        flat = [k for k in raw if k in _FLAT]
        if nested and flat:
            raise ParameterError(
                f"{path}.{flat[0]}: the flat form cannot be mixed with {nested[0]}; use profiles/deciders only"
            )
        parameters = DisaggParameters()
        for section, keys in _NESTED.items():
            given = raw.get(section) or {}
            if not isinstance(given, Mapping):
                raise ParameterError(f"{path}.{section}: expected a mapping with keys {', '.join(keys)}")
            for key, value in given.items():
                if key not in keys:
                    hint = " (encode disaggregation is not supported)" if key == "encode" else ""
                    raise ParameterError(f"{path}.{section}.{key}: unknown key{hint}; valid keys: {', '.join(keys)}")
                getattr(parameters, section)[key] = _string(value, f"{path}.{section}.{key}")
        for key in flat:
            section, entry = _FLAT[key]
            if key == "deciderPluginName" and "prefillDeciderPluginName" in raw:
                continue  # the older alias yields to the newer flat name
            getattr(parameters, section)[entry] = _string(raw[key], f"{path}.{key}")
        return parameters

    def __init__(self, name: str, parameters: DisaggParameters) -> None:
        super().__init__(name, parameters)
        self.parameters: DisaggParameters = parameters
        self.decode = parameters.profiles["decode"]
        self.prefill = parameters.profiles["prefill"]
        self.decider: PDDecider | None = None

    def resolve(self, profiles: Sequence[str], plugins: Mapping[str, Plugin]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        declared = ", ".join(profiles) or "none"
        if self.decode not in profiles:
            message = f"no scheduling profile named {self.decode!r}; declared: {declared}"
            problems.append(("parameters.profiles.decode", message))
        ref = self.parameters.deciders.get("prefill")
        if ref is None:
            return problems
        decider = plugins.get(ref)
        if not isinstance(decider, PDDecider):
            deciders = ", ".join(n for n, p in plugins.items() if isinstance(p, PDDecider)) or "none"
            what = "is not declared under plugins" if decider is None else f"is a {decider.role}, not a decider"
            problems.append(("parameters.deciders.prefill", f"{ref!r} {what}; declared deciders: {deciders}"))
        else:
            self.decider = decider
        if self.prefill not in profiles:
            message = (
                f"a prefill decider is set but no scheduling profile is named {self.prefill!r}; declared: {declared}"
            )
            problems.append(("parameters.profiles.prefill", message))
        return problems

    def pick_profiles(
        self,
        state: CycleState,
        candidates: SlotArray,
        profiles: Sequence[str],
        results: Mapping[str, ProfileResult | None],
    ) -> list[str]:
        if self.decode not in results:
            return [self.decode]
        decode = results[self.decode]
        if decode is None or not len(decode.slots) or self.decider is None or self.prefill in results:
            return []
        if self.decider.disaggregate(state, int(decode.slots[0]), candidates):
            return [self.prefill]
        return []

    def process_results(self, state: CycleState, results: Mapping[str, ProfileResult | None]) -> SchedulingResult:
        decode = results.get(self.decode)
        if decode is None or not len(decode.slots):
            raise SchedulingError("failed to find available decode workers")
        picked = {self.decode: decode}
        headers: dict[str, str] = {}
        prefill = results.get(self.prefill)
        if prefill is None or not len(prefill.slots):
            return SchedulingResult(picked, self.decode, headers)
        picked[self.prefill] = prefill
        headers[PREFILLER_HEADER] = state.table.hostports[int(prefill.slots[0])]
        return SchedulingResult(picked, self.decode, headers, prefill_profile=self.prefill)
