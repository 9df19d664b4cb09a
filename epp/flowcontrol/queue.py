"""The flow-control queue, pure: priority bands → fairness between flows → ordering within a flow.

No clocks and no I/O: callers pass `now`. A flow is (fairness id, priority). Bands are dispatched in
strict priority order (higher first). Within a band the fairness policy picks the flow:
`global-strict-fairness-policy` takes the best head over all flows (one global order),
`round-robin-fairness-policy` gives each non-empty flow a turn. Within a flow the ordering policy orders
requests: `fcfs-ordering-policy` by arrival, `edf-ordering-policy` by deadline (arrival + TTL; no TTL
sorts last), ties by arrival. Each flow is a heap, so enqueue and dispatch cost O(log n) and waiting
requests cost nothing.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, TypeVar

FAIRNESS_POLICIES = ("global-strict-fairness-policy", "round-robin-fairness-policy")
ORDERING_POLICIES = ("fcfs-ordering-policy", "edf-ordering-policy")
#: Taken items leave the heaps lazily; a heap holding more than twice its queued items + this is rebuilt, which
#: bounds it by what is queued (an old item at the top would otherwise pin every later one) at O(1) amortized.
HEAP_SLACK = 64


@dataclass(frozen=True)
class BandSettings:
    priority: int
    max_bytes: int = 1_000_000_000
    max_requests: int = 0  # 0 = unlimited
    fairness: str = "global-strict-fairness-policy"
    ordering: str = "fcfs-ordering-policy"


@dataclass(frozen=True)
class QueueSettings:
    max_bytes: int = 0  # 0 = unlimited
    max_requests: int = 0
    default_ttl: float = 0.0  # seconds; 0 = only client cancellation ends a wait
    bands: tuple[BandSettings, ...] = ()
    #: template for priorities without an explicit band
    default_band: BandSettings = field(default_factory=lambda: BandSettings(priority=0))

    def band_for(self, priority: int) -> BandSettings:
        for band in self.bands:
            if band.priority == priority:
                return band
        template = self.default_band
        return BandSettings(priority, template.max_bytes, template.max_requests, template.fairness, template.ordering)


@dataclass(eq=False)
class Item:
    """One waiting request. `payload` is whatever the caller needs back on dispatch."""

    fairness_id: str
    priority: int
    size: int
    arrival: float
    deadline: float  # math.inf when there is no TTL
    payload: Any = None
    seq: int = 0
    queued: bool = False

    def sort_key(self, ordering: str) -> tuple[float, int]:
        if ordering == "edf-ordering-policy":
            return (self.deadline, self.seq)
        return (float(self.seq), self.seq)


class CapacityExceeded(Exception):
    pass


class _Flow:
    __slots__ = ("heap", "key", "live")

    def __init__(self, key: tuple[str, int]) -> None:
        self.key = key
        self.heap: list[tuple[tuple[float, int], Item]] = []
        self.live = 0  # queued items in `heap`

    def head(self) -> Item | None:
        # Removed items stay in the heap until they surface (lazy deletion).
        while self.heap and not self.heap[0][1].queued:
            heapq.heappop(self.heap)
        return self.heap[0][1] if self.heap else None


class _Band:
    def __init__(self, settings: BandSettings) -> None:
        self.settings = settings
        self.flows: OrderedDict[str, _Flow] = OrderedDict()
        self.count = 0
        self.bytes = 0


class FlowQueue:
    def __init__(self, settings: QueueSettings) -> None:
        self.settings = settings
        self._bands: dict[int, _Band] = {}
        self._band_order: list[int] = []  # priorities, highest first
        self._seq = itertools.count()
        self.count = 0
        self.bytes = 0
        # expiry heap over all items with a finite deadline
        self._deadlines: list[tuple[float, int, Item]] = []

    def __len__(self) -> int:
        return self.count

    def make_item(self, fairness_id: str, priority: int, size: int, now: float, ttl: float | None = None,
                  payload: Any = None) -> Item:  # fmt: skip
        ttl = self.settings.default_ttl if ttl is None else ttl
        deadline = now + ttl if ttl > 0 else math.inf
        return Item(fairness_id, priority, size, now, deadline, payload, next(self._seq))

    def push(self, item: Item) -> None:
        """Queue an item; raises CapacityExceeded when a global or band limit would be passed."""
        settings = self.settings
        band = self._band(item.priority)
        limits = (
            (settings.max_requests, self.count + 1, "maxRequests"),
            (settings.max_bytes, self.bytes + item.size, "maxBytes"),
            (band.settings.max_requests, band.count + 1, f"priority band {item.priority} maxRequests"),
            (band.settings.max_bytes, band.bytes + item.size, f"priority band {item.priority} maxBytes"),
        )
        for limit, wanted, name in limits:
            if limit and wanted > limit:
                raise CapacityExceeded(f"flow control queue full ({name} {limit})")
        flow = band.flows.get(item.fairness_id)
        if flow is None:
            flow = band.flows[item.fairness_id] = _Flow((item.fairness_id, item.priority))
        heapq.heappush(flow.heap, (item.sort_key(band.settings.ordering), item))
        flow.live += 1
        item.queued = True
        band.count += 1
        band.bytes += item.size
        self.count += 1
        self.bytes += item.size
        if item.deadline != math.inf:
            heapq.heappush(self._deadlines, (item.deadline, item.seq, item))

    def remove(self, item: Item) -> bool:
        """Take an item out (client gone, expired); False if it was no longer queued."""
        if not item.queued:
            return False
        item.queued = False
        band = self._bands[item.priority]
        band.count -= 1
        band.bytes -= item.size
        self.count -= 1
        self.bytes -= item.size
        flow = band.flows.get(item.fairness_id)
        if flow is not None:
            flow.live -= 1
            if flow.head() is None:
                del band.flows[item.fairness_id]
            else:
                flow.heap = _compacted(flow.heap, flow.live)
        self._deadlines = _compacted(self._deadlines, self.count)
        return True

    def peek(self) -> Item | None:
        """The item that would be dispatched next, without taking it."""
        chosen = self._next()
        return None if chosen is None else chosen[2]

    def pop(self) -> Item | None:
        chosen = self._next()
        if chosen is None:
            return None
        band, flow, item = chosen
        if band.settings.fairness == "round-robin-fairness-policy":
            band.flows.move_to_end(flow.key[0])  # this flow had its turn
        self.remove(item)
        return item

    def _next(self) -> tuple[_Band, _Flow, Item] | None:
        """The first non-empty band by priority, and its next flow and item."""
        for priority in self._band_order:
            band = self._bands[priority]
            if band.count:
                return (band, *self._choose(band))
        return None

    def expire(self, now: float) -> list[Item]:
        """Remove and return every queued item whose deadline has passed."""
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now:
            item = heapq.heappop(self._deadlines)[2]
            if self.remove(item):
                expired.append(item)
        return expired

    def next_deadline(self) -> float:
        while self._deadlines and not self._deadlines[0][2].queued:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else math.inf

    def flow_sizes(self) -> dict[tuple[str, int], tuple[int, int]]:
        """(fairness id, priority) → (requests, bytes) for metrics; O(queued items).

        Called from the /metrics thread while the event loop adds flows: each container is copied in one
        C call (atomic under the GIL) before it is walked, so the walk cannot see it change size."""
        sizes: dict[tuple[str, int], tuple[int, int]] = {}
        for band in list(self._bands.values()):
            for flow in list(band.flows.values()):
                live = [item for _, item in list(flow.heap) if item.queued]
                if live:
                    sizes[flow.key] = (len(live), sum(item.size for item in live))
        return sizes

    def _band(self, priority: int) -> _Band:
        band = self._bands.get(priority)
        if band is None:
            band = self._bands[priority] = _Band(self.settings.band_for(priority))
            self._band_order = sorted(self._bands, reverse=True)
        return band

    def _choose(self, band: _Band) -> tuple[_Flow, Item]:
        ordering = band.settings.ordering
        if band.settings.fairness == "round-robin-fairness-policy":
            for flow in band.flows.values():
                head = flow.head()
                if head is not None:
                    return flow, head
        else:
            best: tuple[_Flow, Item] | None = None
            for flow in band.flows.values():
                head = flow.head()
                if head is not None and (best is None or head.sort_key(ordering) < best[1].sort_key(ordering)):
                    best = (flow, head)
            if best is not None:
                return best
        raise AssertionError("band count says non-empty but no flow has a head")


#: a heap entry of a flow or of the deadline heap: the item comes last
_Entry = TypeVar("_Entry", tuple[tuple[float, int], Item], tuple[float, int, Item])


def _compacted(heap: list[_Entry], live: int) -> list[_Entry]:
    """`heap`, rebuilt without its taken items once they outnumber its `live` (queued) ones by far."""
    if len(heap) <= 2 * live + HEAP_SLACK:
        return heap
    kept = [entry for entry in heap if entry[-1].queued]
    heapq.heapify(kept)
    return kept
