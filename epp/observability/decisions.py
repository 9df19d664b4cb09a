"""The last routing decisions, kept cheaply on the request path and described only when someone asks.

Recording a decision stores references: the request's identity, the destination and each profile's
ProfileTrace (the candidate arrays each filter returned, each scorer's score array, the total the picker
received). No array is copied and no endpoint is named while a request waits; the endpoint list the slots
refer to is copied once per table generation (membership change), so a record still names the endpoints
it chose among after they leave. `describe` builds the JSON of /debug/decisions from them.

The ring is a fixed list written by the event loop and copied whole by the metrics thread (a list copy is
atomic under the GIL), so neither side takes a lock.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from epp.datastore.table import Endpoint, EndpointTable, SlotArray
from epp.scheduling.types import LLMRequest, ProfileResult, ProfileTrace

#: decisions kept when --debug-decisions is not given
DEFAULT_CAPACITY = 100
#: candidates described per profile unless the query asks for more (`?candidates=N`, 0 = all)
DEFAULT_CANDIDATES = 100


@dataclass(slots=True)
class DecisionRecord:
    sequence: int
    at: float
    request_id: str
    model: str
    target_model: str
    objective: str
    priority: int
    #: `ip:port[,ip:port...]` the request was sent to ("" when no endpoint was picked)
    destination: str
    primary_profile: str
    profiles: Mapping[str, ProfileResult | None]
    #: the table's endpoints by slot when the decision was made
    endpoints: Sequence[Endpoint | None]
    #: why no endpoint was picked ("" when one was)
    error: str = ""
    #: the profile run that found nothing, when a filter emptied the candidates
    failed_trace: ProfileTrace | None = None
    #: "scheduler"; "random" for a request without a body (the reference picks those uniformly); "admission"
    #: for one refused before the scheduler ran
    method: str = "scheduler"


class DecisionLog:
    """A ring of the last `capacity` decisions (capacity ≥ 1)."""

    def __init__(self, table: EndpointTable, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"a decision log keeps at least one decision, not {capacity}")
        self.table = table
        self.capacity = capacity
        self.recorded = 0
        self._ring: list[tuple[Any, ...] | None] = [None] * capacity
        self._snapshot: tuple[int, list[Endpoint | None]] = (-1, [])

    def _endpoints(self) -> list[Endpoint | None]:
        table = self.table
        generation, endpoints = self._snapshot
        if generation != table.generation:
            generation = table.generation
            endpoints = table.endpoints[: table.slot_limit]
            self._snapshot = (generation, endpoints)
        return endpoints

    def record(
        self,
        request: LLMRequest,
        destination: str,
        primary_profile: str,
        profiles: Mapping[str, ProfileResult | None],
        method: str = "scheduler",
    ) -> None:
        self._store(request, destination, primary_profile, profiles, method, "", None)

    def record_failure(
        self, request: LLMRequest, error: str, trace: ProfileTrace | None, method: str = "scheduler"
    ) -> None:
        """A request no endpoint was picked for: by the scheduler (`trace`: the run a filter emptied), or refused
        before it ("admission": shed while saturated, no candidate serves the model or the subset)."""
        self._store(request, "", trace.plan.name if trace is not None else "", {}, method, error, trace)

    def _store(
        self,
        request: LLMRequest,
        destination: str,
        primary_profile: str,
        profiles: Mapping[str, ProfileResult | None],
        method: str,
        error: str,
        failed_trace: ProfileTrace | None,
    ) -> None:
        sequence = self.recorded
        # a tuple in the ring (cheaper to build than the record it becomes when a page asks)
        self._ring[sequence % self.capacity] = (
            sequence,
            time.time(),
            request.request_id,
            request.model,
            request.target_model,
            request.objective,
            request.priority,
            destination,
            primary_profile,
            profiles,
            self._endpoints(),
            error,
            failed_trace,
            method,
        )
        self.recorded = sequence + 1

    def recent(self) -> list[DecisionRecord]:
        """The kept decisions, newest first."""
        records = [DecisionRecord(*r) for r in list(self._ring) if r is not None]
        records.sort(key=lambda r: r.sequence, reverse=True)
        return records

    def describe(self, limit: int = 0, request_id: str = "", candidates: int = DEFAULT_CANDIDATES) -> dict[str, Any]:
        """The JSON document of /debug/decisions: newest first, at most `limit` (0: all kept), only those of
        `request_id` when given, at most `candidates` candidates per profile (0: all; the picked ones always)."""
        records = self.recent()
        if request_id:
            records = [r for r in records if r.request_id == request_id]
        if limit > 0:
            records = records[:limit]
        return {
            "capacity": self.capacity,
            "recorded": self.recorded,
            "decisions": [describe_record(r, candidates) for r in records],
        }


def describe_record(record: DecisionRecord, candidates: int = DEFAULT_CANDIDATES) -> dict[str, Any]:
    endpoints = record.endpoints
    entry: dict[str, Any] = {
        "sequence": record.sequence,
        "time": iso_time(record.at, milliseconds=True),
        "request_id": record.request_id,
        "model": record.model,
        "target_model": record.target_model,
        "objective": record.objective,
        "priority": record.priority,
        "method": record.method,
        "outcome": "failed" if record.error else "routed",
        "destination": record.destination,
        "primary_profile": record.primary_profile,
        "profiles": {},
    }
    if record.error:
        entry["error"] = record.error
    profiles: dict[str, Any] = entry["profiles"]
    for name, result in record.profiles.items():
        if result is None:
            profiles[name] = {"outcome": "no endpoint"}
        elif result.trace is None:
            profiles[name] = {"picked": _names(result.slots, endpoints)}
        else:
            profiles[name] = describe_trace(result.trace, endpoints, candidates, result.slots)
    if record.failed_trace is not None:
        profiles[record.failed_trace.plan.name] = describe_trace(record.failed_trace, endpoints, candidates, None)
    return entry


def describe_trace(
    trace: ProfileTrace,
    endpoints: Sequence[Endpoint | None],
    candidates: int = DEFAULT_CANDIDATES,
    picked: SlotArray | None = None,
) -> dict[str, Any]:
    """One profile run: the filters (what each removed), the scorers and their weights, every candidate's
    score per scorer and total (best first), and what the picker took."""
    plan = trace.plan
    filters = []
    before = trace.considered
    for (name, kind), kept in zip(plan.filters, trace.kept, strict=False):
        removed = np.setdiff1d(before, kept)
        filters.append(
            {
                "name": name,
                "type": kind,
                "in": len(before),
                "kept": len(kept),
                "removed": _names(removed if candidates <= 0 else removed[:candidates], endpoints),
            }
        )
        before = kept
    described: dict[str, Any] = {
        "filters": filters,
        "scorers": [{"name": name, "type": kind, "weight": weight} for name, kind, weight in plan.scorers],
        "picker": {"name": plan.picker[0], "type": plan.picker[1]},
        "candidates_total": len(trace.candidates) if trace.total is not None else 0,
    }
    if trace.total is None:  # a filter left nothing to score
        described["candidates"] = []
        return described
    total = trace.total
    chosen = np.isin(trace.candidates, picked) if picked is not None else np.zeros(len(total), dtype=np.bool_)
    order = np.lexsort((~chosen, -total))  # best first; among equal totals, the picked ones first
    shown = order if candidates <= 0 else order[:candidates]
    if candidates > 0:  # the picked ones are always shown (a weighted-random pick need not be among the best)
        shown = np.concatenate((shown, np.setdiff1d(np.flatnonzero(chosen), shown)))
    names = [name for name, _, _ in plan.scorers]
    rows = []
    for position in shown.tolist():
        slot = int(trace.candidates[position])
        endpoint = endpoints[slot] if slot < len(endpoints) else None
        rows.append(
            {
                "endpoint": endpoint.hostport if endpoint is not None else f"slot {slot}",
                "name": endpoint.name if endpoint is not None else "",
                "total": float(total[position]),
                "scores": {name: float(scores[position]) for name, scores in zip(names, trace.scores, strict=True)},
            }
        )
    described["candidates"] = rows
    if picked is not None:
        described["picked"] = _names(picked, endpoints)
    return described


def endpoint_scores(trace: ProfileTrace, hostports: Sequence[str]) -> list[tuple[str, float]]:
    """(ip:port, total score) of every candidate the profile scored; `hostports` is the table's column."""
    if trace.total is None:
        return []
    return list(zip([hostports[slot] for slot in trace.candidates.tolist()], trace.total.tolist(), strict=True))


def _names(slots: SlotArray, endpoints: Sequence[Endpoint | None]) -> list[str]:
    names = []
    for slot in slots.tolist():
        endpoint = endpoints[slot] if slot < len(endpoints) else None
        names.append(endpoint.hostport if endpoint is not None else f"slot {slot}")
    return names


def iso_time(at: float, milliseconds: bool = False) -> str:
    """`2026-12-07T03:55:03Z` (UTC), with `.123` before the Z when asked."""
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
    return text + (f".{int(at % 1 * 1000):03d}Z" if milliseconds else "Z")
