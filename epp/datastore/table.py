"""The columnar endpoint table: one row slot per endpoint, numpy columns for everything scorers read.

Slots are stable for an endpoint's lifetime and reused after it leaves. Identity data (name, address,
labels, LoRA adapter sets) lives in Python lists indexed by slot and is only read off the hot path or
for the few rows a pick returns; load data lives in contiguous float64 columns that filters and
scorers index with candidate slot arrays.

The numeric columns sit in one flat buffer so that another process (the scrape plane) can map the
same memory and write load columns in place; see `EndpointTable.create(buffer=...)`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatColumn = npt.NDArray[np.float64]
BoolColumn = npt.NDArray[np.bool_]
SlotArray = npt.NDArray[np.intp]

#: Numeric columns, in buffer order. Scraped columns are written by the data layer; the in-flight
#: columns by the EPP's own accounting; `metrics_time` is the monotonic time of the last good scrape
#: (0.0 = never scraped). `scrape_inflight_*` are the in-flight columns as they stood when the last good
#: scrape was sent, so the load a scorer reads is the scrape corrected by what was routed and finished since
#: (see epp.datastore.fresh). `epoch` counts a slot's occupants (bumped when an endpoint is added to it and
#: when it leaves; never reset): whatever was charged or started for one occupant (a scrape in the scrape
#: process, a request's in-flight load, a deferred prefix insert) checks it, so nothing meant for a
#: departed endpoint lands in the row of the one that reuses its slot.
COLUMNS: tuple[str, ...] = (
    "waiting_queue",
    "running_requests",
    "kv_usage",
    "cache_block_size",
    "cache_num_blocks",
    "max_lora",
    "metrics_time",
    "scrape_errors",
    "inflight_requests",
    "inflight_tokens",
    "inflight_prompt_tokens",
    "scrape_inflight_requests",
    "scrape_inflight_prompt_tokens",
    "epoch",
)

DEFAULT_CAPACITY = 16384


class TableFullError(RuntimeError):
    pass


@dataclass(frozen=True)
class Endpoint:
    """What discovery knows about one model-server endpoint (a pod's target port, or a static entry)."""

    address: str
    port: int
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    metrics_port: int | None = None

    @property
    def hostport(self) -> str:
        """`ip:port` as Envoy's ORIGINAL_DST cluster expects it (IPv6 bracketed)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    @property
    def key(self) -> str:
        return self.name or self.hostport


class EndpointTable:
    """Struct-of-arrays table of endpoints. Mutations take a lock; reads on the hot path do not."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, buffer: memoryview | bytearray | None = None) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        nbytes = self.buffer_size(capacity)
        if buffer is None:
            buffer = bytearray(nbytes)
        elif len(buffer) < nbytes:
            raise ValueError(f"buffer of {len(buffer)} bytes is smaller than the {nbytes} a table of {capacity} needs")
        self.buffer = buffer
        flat = np.frombuffer(buffer, dtype=np.float64, count=capacity * len(COLUMNS))
        self._columns: dict[str, FloatColumn] = {
            name: flat[i * capacity : (i + 1) * capacity] for i, name in enumerate(COLUMNS)
        }
        self.waiting_queue = self._columns["waiting_queue"]
        self.running_requests = self._columns["running_requests"]
        self.kv_usage = self._columns["kv_usage"]
        self.cache_block_size = self._columns["cache_block_size"]
        self.cache_num_blocks = self._columns["cache_num_blocks"]
        self.max_lora = self._columns["max_lora"]
        self.metrics_time = self._columns["metrics_time"]
        self.scrape_errors = self._columns["scrape_errors"]
        self.inflight_requests = self._columns["inflight_requests"]
        self.inflight_tokens = self._columns["inflight_tokens"]
        self.inflight_prompt_tokens = self._columns["inflight_prompt_tokens"]
        self.scrape_inflight_requests = self._columns["scrape_inflight_requests"]
        self.scrape_inflight_prompt_tokens = self._columns["scrape_inflight_prompt_tokens"]
        self.epoch = self._columns["epoch"]
        self._reset_columns = [column for name, column in self._columns.items() if name != "epoch"]
        #: the numeric columns as the rows of one (column, slot) matrix, in COLUMNS order (the same memory): one
        #: `rows[:k].take(candidates, axis=1)` gathers several columns for the candidates in one numpy call
        self.rows: npt.NDArray[np.float64] = flat.reshape(len(COLUMNS), capacity)

        self.present = np.zeros(capacity, dtype=np.bool_)
        self.endpoints: list[Endpoint | None] = [None] * capacity
        self.hostports: list[str] = [""] * capacity
        self.lora_active: list[frozenset[str]] = [frozenset()] * capacity
        self.lora_waiting: list[frozenset[str]] = [frozenset()] * capacity
        #: adapters running or waiting per slot (len of the two sets), for vectorised LoRA scoring
        self.lora_loaded = np.zeros(capacity, dtype=np.float64)
        #: adapter → mask over slots where it is running / waiting (an adapter no slot has is dropped)
        self._active_masks: dict[str, BoolColumn] = {}
        self._waiting_masks: dict[str, BoolColumn] = {}
        self._slot_by_key: dict[str, int] = {}
        #: called on the event loop after the director charges or releases in-flight load or a first chunk
        #: releases queued prefill (the --shared-state link wakes on it to publish the change)
        self.load_listener: Callable[[], None] | None = None
        self._slot_by_hostport: dict[str, int] = {}
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        self._lock = threading.RLock()  # add() removes the endpoint it displaces
        #: bumps on every add/remove; caches keyed on it (e.g. the live slot array) stay valid until then
        self.generation = 0
        #: one past the highest slot ever used: every present slot is below it
        self.slot_limit = 0
        self.lora_generation = 0
        self._live_cache: tuple[int, SlotArray] = (-1, np.empty(0, dtype=np.intp))
        self._listeners: list[Listener] = []

    @staticmethod
    def buffer_size(capacity: int) -> int:
        return capacity * len(COLUMNS) * 8

    def column(self, name: str) -> FloatColumn:
        try:
            return self._columns[name]
        except KeyError:
            raise KeyError(f"unknown column {name!r}; columns are {', '.join(COLUMNS)}") from None

    # --- membership -------------------------------------------------------------------------

    def add(self, endpoint: Endpoint) -> int:
        """Insert or update an endpoint; returns its slot. Load columns start at zero for a new slot.

        An endpoint keeps its slot, load and epoch only while its `ip:port` stays the same: at another
        address it is another server, so it is removed and added afresh. An address is one endpoint's:
        adding an endpoint at an address another key holds removes that one (a pool's `targetPorts`
        reordered moves rank 0 onto rank 1's port before rank 1 moves on)."""
        with self._lock:
            slot = self._slot_by_key.get(endpoint.key)
            if slot is not None:
                old = self.endpoints[slot]
                if old == endpoint:
                    return slot
                assert old is not None
                if old.hostport == endpoint.hostport:
                    self.endpoints[slot] = endpoint
                    self.generation += 1
                    self._notify("update", slot, endpoint)
                    return slot
                self.remove(endpoint.key)
            holder = self._slot_by_hostport.get(endpoint.hostport)
            if holder is not None:
                previous = self.endpoints[holder]
                assert previous is not None
                self.remove(previous.key)
            if not self._free:
                raise TableFullError(
                    f"endpoint table is full ({self.capacity} endpoints); start epp with a larger --max-endpoints"
                )
            slot = self._free.pop()
            self.slot_limit = max(self.slot_limit, slot + 1)
            # epoch first: a scrape of the slot's previous pod that writes after this either sees the new
            # epoch and undoes its write, or wrote before the zeroing below
            self.epoch[slot] += 1
            for column in self._reset_columns:
                column[slot] = 0.0
            self.endpoints[slot] = endpoint
            self.hostports[slot] = endpoint.hostport
            self._store_lora(slot, frozenset(), frozenset())
            self._slot_by_key[endpoint.key] = slot
            self._slot_by_hostport[endpoint.hostport] = slot
            self.present[slot] = True
            self.generation += 1
            self._notify("add", slot, endpoint)
            return slot

    def remove(self, key: str) -> int | None:
        """Remove the endpoint with this key; returns the freed slot, or None if it was not there."""
        with self._lock:
            slot = self._slot_by_key.pop(key, None)
            if slot is None:
                return None
            endpoint = self.endpoints[slot]
            assert endpoint is not None
            del self._slot_by_hostport[endpoint.hostport]
            self.epoch[slot] += 1
            # its load leaves with it (charges of its open requests are not released once the epoch moved on)
            for column in self._reset_columns:
                column[slot] = 0.0
            self.present[slot] = False
            self._store_lora(slot, frozenset(), frozenset())
            self.endpoints[slot] = None
            self.hostports[slot] = ""
            self._free.append(slot)
            self.generation += 1
            self._notify("remove", slot, endpoint)
            return slot

    def replace_all(self, endpoints: list[Endpoint]) -> None:
        """Make the table hold exactly these endpoints, keeping slots of those that stay."""
        wanted = {e.key: e for e in endpoints}
        if len(wanted) != len(endpoints):
            seen: set[str] = set()
            dupes = sorted({e.key for e in endpoints if e.key in seen or seen.add(e.key)})  # type: ignore[func-returns-value]
            raise ValueError(f"duplicate endpoints: {', '.join(dupes)}")
        addresses = Counter(e.hostport for e in endpoints)
        shared = sorted(hostport for hostport, count in addresses.items() if count > 1)
        if shared:
            raise ValueError(f"more than one endpoint at {', '.join(shared)}")
        # those leaving or moving to another address go first, so an address is free when its new
        # holder is added (a move is a remove and an add; see add())
        for key, slot in list(self._slot_by_key.items()):
            endpoint = wanted.get(key)
            if endpoint is None or endpoint.hostport != self.hostports[slot]:
                self.remove(key)
        for endpoint in endpoints:
            self.add(endpoint)

    # --- reads --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._slot_by_key)

    def live_slots(self) -> SlotArray:
        """Sorted slots of present endpoints (cached until membership changes).

        Also called from the /metrics thread: numpy's nonzero counts and then fills without holding the
        GIL, so on the live mask, while the event loop removes an endpoint, it returns uninitialised slot
        numbers. A private copy of the mask is consistent."""
        generation, slots = self._live_cache
        if generation != self.generation:
            generation = self.generation
            slots = np.flatnonzero(self.present.copy()).astype(np.intp)
            self._live_cache = (generation, slots)
        return slots

    def slot_of(self, key: str) -> int | None:
        return self._slot_by_key.get(key)

    def slot_of_hostport(self, hostport: str) -> int | None:
        return self._slot_by_hostport.get(hostport)

    def endpoint(self, slot: int) -> Endpoint:
        endpoint = self.endpoints[slot]
        if endpoint is None:
            raise KeyError(f"slot {slot} is empty")
        return endpoint

    def items(self) -> Iterator[tuple[int, Endpoint]]:
        for slot in self.live_slots():
            endpoint = self.endpoints[int(slot)]
            if endpoint is not None:
                yield int(slot), endpoint

    # --- LoRA state (sets of adapter names; columns are derived per adapter on demand) -------

    def set_lora(self, slot: int, active: frozenset[str], waiting: frozenset[str], max_lora: float) -> None:
        if self.lora_active[slot] != active or self.lora_waiting[slot] != waiting:
            self._store_lora(slot, active, waiting)
            self.lora_generation += 1
        self.max_lora[slot] = max_lora

    def lora_active_mask(self, adapter: str) -> BoolColumn | None:
        """Slots running `adapter` (None: none does)."""
        return self._active_masks.get(adapter)

    def lora_waiting_mask(self, adapter: str) -> BoolColumn | None:
        """Slots with `adapter` waiting to be loaded (None: none has)."""
        return self._waiting_masks.get(adapter)

    def _store_lora(self, slot: int, active: frozenset[str], waiting: frozenset[str]) -> None:
        for masks, old, new in (
            (self._active_masks, self.lora_active[slot], active),
            (self._waiting_masks, self.lora_waiting[slot], waiting),
        ):
            for adapter in old - new:
                mask = masks[adapter]
                mask[slot] = False
                if not mask.any():
                    del masks[adapter]
            for adapter in new - old:
                if adapter not in masks:
                    masks[adapter] = np.zeros(self.capacity, dtype=np.bool_)
                masks[adapter][slot] = True
        self.lora_active[slot] = active
        self.lora_waiting[slot] = waiting
        self.lora_loaded[slot] = len(active) + len(waiting)

    # --- change listeners (discovery → scrapers, prefix index) ---------------------------------

    def subscribe(self, listener: Listener) -> None:
        """`listener(kind, slot, endpoint)` runs (under the table lock) on add, update and remove."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _notify(self, kind: str, slot: int, endpoint: Endpoint) -> None:
        for listener in self._listeners:
            listener(kind, slot, endpoint)


Listener = Callable[[str, int, Endpoint], None]
