"""Filters: each returns the subset of the candidate slots it keeps (never a new slot).

Label-based filters keep a boolean column per slot, updated by table membership events (add, update,
remove), so a request only indexes it with the candidates. The testing filter resolves the addresses
named in a request header through an address → slots map kept the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from epp.datastore.table import Endpoint, EndpointTable, SlotArray
from epp.plugins.load import inflight_load
from epp.plugins.prefix import STATE_KEY, ApproxPrefixCacheProducer
from epp.scheduling.plugin import CycleState, Filter, ParameterError, parameter_mapping, require_non_negative
from epp.units import unknown_keys

ROLE_LABEL = "llm-d.ai/role"
PREFILL_ROLES = frozenset({"prefill", "encode-prefill", "prefill-decode", "both", "encode-prefill-decode"})
DECODE_ROLES = frozenset({"decode", "prefill-decode", "both", "encode-prefill-decode"})
TEST_SELECTION_HEADER = "test-epp-endpoint-selection"

Predicate = Callable[[Endpoint], bool]


class SlotMask:
    """`mask[slot]` = predicate(endpoint in slot), kept current by the table's membership events."""

    def __init__(self, predicate: Predicate) -> None:
        self.predicate = predicate
        self.table: EndpointTable | None = None
        self.mask = np.zeros(0, dtype=np.bool_)

    def bind(self, table: EndpointTable) -> None:
        self.table = table
        self.mask = np.zeros(table.capacity, dtype=np.bool_)
        table.subscribe(self._on_change)
        for slot, endpoint in table.items():
            self.mask[slot] = self.predicate(endpoint)

    def _on_change(self, kind: str, slot: int, endpoint: Endpoint) -> None:
        self.mask[slot] = kind != "remove" and self.predicate(endpoint)

    def keep(self, table: EndpointTable, candidates: SlotArray) -> SlotArray:
        if table is not self.table:
            self.bind(table)
        return candidates[self.mask[candidates]]


class _MaskFilter(Filter):
    def __init__(self, name: str, parameters: Any) -> None:
        super().__init__(name, parameters)
        self.slots = SlotMask(self.matches)

    def matches(self, endpoint: Endpoint) -> bool:
        raise NotImplementedError

    def bind(self, table: EndpointTable) -> None:
        self.slots.bind(table)

    def filter(self, state: CycleState, candidates: SlotArray) -> SlotArray:
        return self.slots.keep(state.table, candidates)


class PrefillFilter(_MaskFilter):
    """Endpoints whose `llm-d.ai/role` is prefill, encode-prefill, prefill-decode, both or encode-prefill-decode."""

    type_name = "prefill-filter"

    def matches(self, endpoint: Endpoint) -> bool:
        return endpoint.labels.get(ROLE_LABEL) in PREFILL_ROLES


class DecodeFilter(_MaskFilter):
    """Endpoints whose `llm-d.ai/role` is decode, prefill-decode, both or encode-prefill-decode, or unlabelled."""

    type_name = "decode-filter"

    def matches(self, endpoint: Endpoint) -> bool:
        role = endpoint.labels.get(ROLE_LABEL)
        return role is None or role in DECODE_ROLES


# --- label selectors -------------------------------------------------------------------------------

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


@dataclass
class SelectorParameters:
    match_labels: dict[str, str] = field(default_factory=dict)
    #: [{key, operator, values}] as in a Kubernetes LabelSelector
    match_expressions: list[dict[str, Any]] = field(default_factory=list)


def _parse_requirement(raw: Any, path: str) -> Requirement:
    if not isinstance(raw, Mapping):
        raise ParameterError(f"{path}: expected a mapping {{key, operator, values}}")
    unknown = unknown_keys(raw, ("key", "operator", "values"))
    if unknown:
        raise ParameterError(f"{path}.{unknown[0]}: unknown field; valid fields: key, operator, values")
    key, operator, values = raw.get("key"), raw.get("operator"), raw.get("values", [])
    if not isinstance(key, str) or not key:
        raise ParameterError(f"{path}.key: expected a label name")
    if operator not in OPERATORS:
        raise ParameterError(f"{path}.operator: expected one of {', '.join(OPERATORS)}, got {operator!r}")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ParameterError(f"{path}.values: expected a list of strings")
    if operator in ("In", "NotIn") and not values:
        raise ParameterError(f"{path}.values: operator {operator} needs at least one value")
    if operator in ("Exists", "DoesNotExist") and values:
        raise ParameterError(f"{path}.values: operator {operator} takes no values")
    return Requirement(key, operator, frozenset(values))


class LabelSelectorFilter(_MaskFilter):
    """Endpoints whose labels match a Kubernetes label selector (matchLabels and matchExpressions, all ANDed)."""

    type_name = "label-selector-filter"
    Parameters = SelectorParameters

    @classmethod
    def parse_parameters(cls, raw: Mapping[str, Any] | None, path: str) -> SelectorParameters:
        raw = parameter_mapping(raw, path, ("matchLabels", "matchExpressions"), cls.type_name)
        labels = raw.get("matchLabels") or {}
        if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise ParameterError(f"{path}.matchLabels: expected a mapping of label name to string value")
        expressions = raw.get("matchExpressions") or []
        if not isinstance(expressions, list):
            raise ParameterError(f"{path}.matchExpressions: expected a list of {{key, operator, values}}")
        requirements = [_parse_requirement(e, f"{path}.matchExpressions[{i}]") for i, e in enumerate(expressions)]
        described = [{"key": r.key, "operator": r.operator, "values": sorted(r.values)} for r in requirements]
        return SelectorParameters(dict(labels), described)

    def __init__(self, name: str, parameters: SelectorParameters) -> None:
        self.requirements = [Requirement(k, "In", frozenset({v})) for k, v in parameters.match_labels.items()]
        self.requirements += [_parse_requirement(e, "matchExpressions") for e in parameters.match_expressions]
        super().__init__(name, parameters)

    def matches(self, endpoint: Endpoint) -> bool:
        return all(r.matches(endpoint.labels) for r in self.requirements)


class ByLabelSelectorFilter(LabelSelectorFilter):
    """The reference's older name for label-selector-filter."""

    type_name = "by-label-selector"


# --- conformance testing ---------------------------------------------------------------------------


def parse_selection(value: str) -> list[tuple[str, str | None]]:
    """`10.0.0.1, 10.0.0.2:8000, [::1]:9000, ::2` → (address, hostport or None), in order, deduplicated."""
    seen: set[tuple[str, str | None]] = set()
    entries: list[tuple[str, str | None]] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        entry: tuple[str, str | None]
        if item.startswith("["):
            close = item.find("]")
            address = item[1:close] if close > 0 else item[1:]
            port = item[close + 1 :] if close > 0 else ""
            entry = (address, f"[{address}]{port}" if port.startswith(":") and len(port) > 1 else None)
        elif item.count(":") == 1:
            entry = (item.split(":", 1)[0], item)
        else:
            entry = (item, None)  # an IPv4 address, or an IPv6 address without brackets (no port)
        if entry not in seen:
            seen.add(entry)
            entries.append(entry)
    return entries


class HeaderBasedTestingFilter(Filter):
    """Keeps the endpoints named in header `test-epp-endpoint-selection` (IP or ip:port, comma-separated), in
    header order; a bare IP selects every endpoint at that address. No header, or an empty one, keeps none."""

    type_name = "header-based-testing-filter"

    def __init__(self, name: str, parameters: Any) -> None:
        super().__init__(name, parameters)
        self.table: EndpointTable | None = None
        self._by_address: dict[str, set[int]] = {}
        self._address_of: dict[int, str] = {}

    def bind(self, table: EndpointTable) -> None:
        self.table = table
        self._by_address, self._address_of = {}, {}
        table.subscribe(self._on_change)
        for slot, endpoint in table.items():
            self._on_change("add", slot, endpoint)

    def _on_change(self, kind: str, slot: int, endpoint: Endpoint) -> None:
        old = self._address_of.pop(slot, None)  # an update may move a slot to another address
        if old is not None:
            self._by_address[old].discard(slot)
        if kind != "remove":
            self._address_of[slot] = endpoint.address
            self._by_address.setdefault(endpoint.address, set()).add(slot)

    def filter(self, state: CycleState, candidates: SlotArray) -> SlotArray:
        table = state.table
        if table is not self.table:
            self.bind(table)
        selected: list[int] = []
        for address, hostport in parse_selection(state.request.headers.get(TEST_SELECTION_HEADER, "")):
            if hostport is None:
                selected.extend(sorted(self._by_address.get(address, ())))
            else:
                slot = table.slot_of_hostport(hostport)
                if slot is not None:
                    selected.append(slot)
        if not selected:
            return candidates[:0]
        ordered = np.array(list(dict.fromkeys(selected)), dtype=np.intp)
        return ordered[np.isin(ordered, candidates)]


# --- prefix-cache affinity ---------------------------------------------------------------------------


@dataclass
class AffinityParameters:
    affinity_threshold: float = 0.80
    exploration_probability: float = 0.01
    #: the TTFT gate needs latency predictions, which nothing produces here; without them it never opens
    max_ttft_penalty_ms: float = field(default=5000.0, metadata={"key": "maxTTFTPenaltyMs"})
    max_tokens_in_flight_penalty: int = 0

    def validate(self) -> None:
        if self.affinity_threshold > 1.0:
            raise ValueError(f"affinityThreshold must be <= 1.0, got {self.affinity_threshold}")
        if not 0.0 <= self.exploration_probability <= 1.0:
            raise ValueError(f"explorationProbability must be in [0, 1], got {self.exploration_probability}")
        if self.max_ttft_penalty_ms != 5000.0:
            raise ValueError(
                f"maxTTFTPenaltyMs {self.max_ttft_penalty_ms:g} is not configurable here: the TTFT gate needs latency "
                "predictions, which no plugin in this build produces; remove the parameter"
            )
        require_non_negative("maxTokensInFlightPenalty", self.max_tokens_in_flight_penalty)


class PrefixCacheAffinityFilter(Filter):
    """Keeps the "sticky" endpoints, whose prefix score (matched blocks / request blocks) ≥ affinityThreshold.

    Keeps everything when: at most one candidate, threshold ≤ 0, an exploration draw (probability
    explorationProbability), no sticky endpoint, or (maxTokensInFlightPenalty > 0) the least-loaded sticky
    endpoint has more than that many in-flight tokens above the least-loaded other one.
    """

    type_name = "prefix-cache-affinity-filter"
    Parameters = AffinityParameters
    consumes = ApproxPrefixCacheProducer.type_name

    def __init__(self, name: str, parameters: AffinityParameters) -> None:
        super().__init__(name, parameters)
        self.threshold = parameters.affinity_threshold
        self.exploration = parameters.exploration_probability
        self.token_penalty = float(parameters.max_tokens_in_flight_penalty)
        self.rng = np.random.default_rng()

    def filter(self, state: CycleState, candidates: SlotArray) -> SlotArray:
        if len(candidates) <= 1 or self.threshold <= 0:
            return candidates
        if self.exploration > 0 and self.rng.random() < self.exploration:
            return candidates
        match = state.read(STATE_KEY)
        if match is None or not match.total_blocks:
            return candidates
        sticky = match.matched_blocks(candidates) / match.total_blocks >= self.threshold
        if not sticky.any():
            return candidates
        if self.token_penalty > 0 and not sticky.all():
            tokens = inflight_load(state).tokens.take(candidates)
            if tokens[sticky].min() - tokens[~sticky].min() > self.token_penalty:
                return candidates
        return candidates[sticky]
