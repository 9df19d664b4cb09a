"""Small pools and cycle states for plugin tests; expectations are computed by hand in each test."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from epp.datastore.table import Endpoint, EndpointTable, SlotArray
from epp.plugins.prefix import STATE_KEY
from epp.scheduling.plugin import CycleState, Plugin
from epp.scheduling.types import LLMRequest


def pool(count: int, labels: Sequence[Mapping[str, str]] | None = None, capacity: int = 32) -> EndpointTable:
    """Endpoints pod-0 … pod-{count-1} at 10.0.0.1 … with port 8000, in slots 0 … count-1."""
    table = EndpointTable(capacity)
    for i in range(count):
        table.add(Endpoint(f"10.0.0.{i + 1}", 8000, name=f"pod-{i}", labels=dict(labels[i]) if labels else {}))
    return table


def request(headers: Mapping[str, str] | None = None, prompt: bytes = b"hello", request_id: str = "r") -> LLMRequest:
    return LLMRequest(request_id, "m", "m", dict(headers or {}), prompt_bytes=prompt, body_size=len(prompt))


def state(table: EndpointTable, headers: Mapping[str, str] | None = None, prompt: bytes = b"hello") -> CycleState:
    return CycleState(request(headers, prompt), table)


def slots(*values: int) -> SlotArray:
    return np.array(values, dtype=np.intp)


class FakeMatch:
    """What the prefix producer leaves in the cycle state, as its consumers see it: total_blocks and matched_blocks."""

    def __init__(self, total_blocks: int, held: Mapping[int, int]) -> None:
        self.total_blocks = total_blocks
        self.held = dict(held)

    def matched_blocks(self, candidates: SlotArray) -> npt.NDArray[np.int64]:
        return np.array([self.held.get(int(s), 0) for s in candidates], dtype=np.int64)


def with_match(cycle: CycleState, total_blocks: int, held: Mapping[int, int]) -> CycleState:
    cycle.write(STATE_KEY, FakeMatch(total_blocks, held))  # type: ignore[arg-type]
    return cycle


P = TypeVar("P", bound=Plugin)


def make(cls: type[P], parameters: Mapping[str, Any] | None = None, name: str = "") -> P:
    """An instance with parameters parsed as the config loader does (errors name the path `p`)."""
    return cls(name or cls.type_name, cls.parse_parameters(parameters, "p"))
