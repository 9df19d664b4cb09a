"""The approximate prefix index in flat numpy arrays: which endpoints were sent which block hashes.

Layout (about 40 bytes per (block, endpoint) entry at the maximum load factor, see benchmarks/scheduler):

- one open-addressing table of (hash, slot) entries placed by hash alone, linear probing, load ≤ 0.5:
  `keys` uint64 (0 = empty, 1 = deleted), `slots` int32, `stamps` uint32 (ring sequence of the entry's
  latest touch). All holders of a hash sit in the probe run that starts at the hash's home bucket, so
  "who holds h" is one windowed gather per request hash, vectorised over the request's hashes.
- per endpoint an LRU of capacity lruCapacityPerServer, kept as an append-only ring of table positions:
  a touch appends the position again and stamps the entry with the new sequence number; eviction pops the
  oldest ring elements and deletes an entry only when the popped element is its latest touch. The ring is
  compacted (stale copies dropped) when full, so it holds at most twice the endpoint's live entries.

Deleted buckets are reclaimed by a rebuild that also doubles the table when live entries pass 30 % of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

EMPTY = np.uint64(0)
DELETED = np.uint64(1)
_LEAST_KEY = np.uint64(2)
_WINDOW = 8
_OFFSETS = np.arange(_WINDOW, dtype=np.intp)
_COLUMN_OFFSETS = np.arange(32, dtype=np.intp)[:, None]  # the walk's first window (probe runs pass 8 often)
_MAX_LOAD = 0.5
_GROW_AT = 0.3
_REBUILD_CHUNK = 1 << 20
_INITIAL_BITS = 12

Positions = npt.NDArray[np.intp]
Keys = npt.NDArray[np.uint64]
_NOTHING: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
_NO_POSITIONS: Positions = np.zeros(0, dtype=np.intp)


def as_keys(hashes: list[int]) -> Keys:
    """Block hashes as table keys: the two sentinel values (a 2^-63 chance each) become 2."""
    keys: Keys = np.array(hashes, dtype=np.uint64)
    np.maximum(keys, _LEAST_KEY, out=keys)
    return keys


@dataclass
class Walk:
    """What `PrefixIndex.walk` found: the walked hashes each slot holds, how many hashes were walked, and
    where their entries sat then (so that a later insert of the same hashes need not search for them)."""

    by_slot: npt.NDArray[np.int64]
    walked: int
    hit: npt.NDArray[np.bool_] | None = None
    window: Positions | None = None
    more_rows: Positions | None = None
    more_positions: Positions | None = None

    def entries(self) -> tuple[Positions, Positions]:
        """(row, table position) of every walked entry, whatever its slot."""
        if self.hit is None or self.window is None:
            return _NO_POSITIONS, _NO_POSITIONS
        offsets, rows = self.hit.nonzero()
        positions = self.window[offsets, rows]
        if self.more_rows is not None and self.more_positions is not None and len(self.more_rows):
            rows = np.concatenate((rows, self.more_rows))
            positions = np.concatenate((positions, self.more_positions))
        return rows, positions


@dataclass
class _Ring:
    capacity: int
    positions: npt.NDArray[np.int32]
    start: int = 0  # sequence number of the oldest element
    end: int = 0  # sequence number the next element gets
    size: int = 0  # live entries (elements that are their entry's latest touch)


class PrefixIndex:
    def __init__(self, capacity_per_slot: int) -> None:
        self.capacity = capacity_per_slot
        self._allocate(_INITIAL_BITS)
        self.live = 0
        self._rings: dict[int, _Ring] = {}

    def _allocate(self, bits: int) -> None:
        self.bits = bits
        self.mask = (1 << bits) - 1
        self._mask64 = np.uint64(self.mask)
        self._mask_i64 = np.array(self.mask, dtype=np.int64)  # 0-d: a cheaper operand than a numpy scalar
        self.keys = np.zeros(1 << bits, dtype=np.uint64)
        self.slots = np.full(1 << bits, -1, dtype=np.int32)
        self.stamps = np.zeros(1 << bits, dtype=np.uint32)
        self.deleted = 0

    def __len__(self) -> int:
        return self.live

    @property
    def nbytes(self) -> int:
        rings = sum(r.positions.nbytes for r in self._rings.values())
        return self.keys.nbytes + self.slots.nbytes + self.stamps.nbytes + rings

    # --- lookups ------------------------------------------------------------------------------------

    def _scan(self, keys: Keys, slot: int = -1, start: Positions | None = None) -> tuple[Positions, Positions]:
        """(row, position) of every entry whose hash is keys[row] (and whose slot is `slot`, if given),
        probing from each hash's home bucket (or from `start`)."""
        rows_found: list[Positions] = []
        positions_found: list[Positions] = []
        active = np.arange(len(keys), dtype=np.intp)
        if start is None:
            start = (keys & self._mask64).astype(np.intp)
        table = self.keys
        while len(active):
            window = (start[:, None] + _OFFSETS) & self.mask
            seen = table[window]
            hit = seen == keys[active, None]
            if slot >= 0:
                hit &= self.slots[window] == slot
            r, c = np.nonzero(hit)
            if len(r):
                rows_found.append(active[r])
                positions_found.append(window[r, c])
            # a hash's entries never lie beyond the first empty bucket of its probe run
            more = ~(seen == EMPTY).any(axis=1)
            active, start = active[more], start[more] + _WINDOW
        if not rows_found:
            empty = np.empty(0, dtype=np.intp)
            return empty, empty
        if len(rows_found) == 1:
            return rows_found[0], positions_found[0]
        return np.concatenate(rows_found), np.concatenate(positions_found)

    def match_by_slot(self, keys: Keys) -> npt.NDArray[np.int64]:
        """Walk the request's hashes in order up to the first one no endpoint holds; the number of walked
        hashes each slot holds, indexed by slot (the array ends at the highest holding slot)."""
        return self.walk(keys).by_slot

    def walk(self, keys: Keys, minlength: int = 0) -> Walk:
        """`match_by_slot` (at least `minlength` long when any hash is held), the number of hashes walked
        (len(keys) when every one is held) and where their entries were."""
        mask = self._mask_i64
        window = (keys.view(np.int64) & mask) + _COLUMN_OFFSETS  # (window, hashes)
        window &= mask
        seen = self.keys.take(window)
        hit = seen == keys
        held = np.logical_or.reduce(hit, axis=0)
        if not held[0]:
            return Walk(_NOTHING, 0)
        more_rows, more_positions = _NO_POSITIONS, _NO_POSITIONS
        # nonzero where no bucket of the window is empty (EMPTY is 0): the run goes on (a min needs no cast to bool)
        unfinished = np.minimum.reduce(seen, axis=0)
        if np.count_nonzero(unfinished):
            rows = np.flatnonzero(unfinished)
            found_rows, more_positions = self._scan(keys[rows], start=window[-1, rows] + 1)
            more_rows = rows[found_rows]
            held[more_rows] = True
        walked = int(held.argmin())
        if held[walked]:
            walked = len(keys)
        else:
            hit, window = hit[:, :walked], window[:, :walked]
            if len(more_rows):
                inside = more_rows < walked
                more_rows, more_positions = more_rows[inside], more_positions[inside]
        holders = self.slots.take(window[hit])
        if len(more_rows):
            holders = np.concatenate((holders, self.slots.take(more_positions)))
        return Walk(np.bincount(holders, minlength=minlength), walked, hit, window, more_rows, more_positions)

    def match(self, keys: Keys) -> tuple[Positions, npt.NDArray[np.int64]]:
        """`match_by_slot` as (slots holding any walked hash, ascending; their counts)."""
        by_slot = self.match_by_slot(keys)
        slots = np.flatnonzero(by_slot)
        return slots, by_slot[slots]

    def holds(self, slot: int, keys: Keys) -> npt.NDArray[np.bool_]:
        rows, _ = self._scan(keys, slot)
        held = np.zeros(len(keys), dtype=np.bool_)
        held[rows] = True
        return held

    # --- updates ------------------------------------------------------------------------------------

    def insert(
        self, slot: int, keys: Keys, capacity: int | None = None, hints: tuple[Positions, Positions] | None = None
    ) -> None:
        """Record that `slot` was sent these hashes (most recent last), evicting its least recently used.
        `hints`: (row, position) pairs where entries of these hashes were seen lately (see `Walk.entries`);
        those still holding `slot`'s entry for the row's hash need no search."""
        ring = self._rings.get(slot)
        limit = capacity or self.capacity
        if ring is None:
            ring = self._rings[slot] = _Ring(limit, np.empty(min(1024, 2 * limit), dtype=np.int32))
        ring.capacity = limit
        if len(keys) > limit:
            cut = len(keys) - limit
            keys = keys[cut:]
            if hints is not None:
                hints = (hints[0][hints[0] >= cut] - cut, hints[1][hints[0] >= cut])
        rows, positions = self._find(slot, keys, hints)
        if len(rows) == len(keys):  # all held already (a repeated prefix): just make them the most recent
            held_positions = np.empty(len(keys), dtype=np.intp)
            held_positions[rows] = positions
            self._append(ring, held_positions)
            return
        request_positions = np.full(len(keys), -1, dtype=np.intp)
        request_positions[rows] = positions
        missing = request_positions < 0
        if len(rows):
            self._append(ring, positions)  # touched first, so the eviction below cannot take them
        overflow = ring.size + int(np.count_nonzero(missing)) - limit
        if overflow > 0:
            self._evict(ring, overflow)
        if missing.any():
            count = int(np.count_nonzero(missing))
            if (self.live + self.deleted + count) > _MAX_LOAD * len(self.keys):
                self._rebuild(self.live + count)
                ring = self._rings[slot]
                rows, positions = self._scan(keys, slot)
                request_positions[rows] = positions
            request_positions[missing] = self._place(keys[missing], np.full(count, slot, dtype=np.int32))
            self.live += count
            ring.size += count
        # the request's blocks become the most recent, in request order (as one Add per block would leave them)
        self._append(ring, request_positions)

    def _find(self, slot: int, keys: Keys, hints: tuple[Positions, Positions] | None) -> tuple[Positions, Positions]:
        """(row, position) of `slot`'s entries for these hashes: confirmed hints, then a search for the rest."""
        if hints is None or not len(hints[0]):
            return self._scan(keys, slot)
        rows, positions = hints  # the table never shrinks, so even hints from before a rebuild index it
        current = self.keys[positions] == keys[rows]
        current &= self.slots[positions] == slot
        rows, positions = rows[current], positions[current]
        if len(rows) == len(keys):  # a slot holds one entry per hash, so every hash is confirmed
            return rows, positions
        unknown = np.ones(len(keys), dtype=np.bool_)
        unknown[rows] = False
        if not unknown.any():
            return rows, positions
        rest = np.flatnonzero(unknown)
        found_rows, found_positions = self._scan(keys[rest], slot)
        return np.concatenate((rows, rest[found_rows])), np.concatenate((positions, found_positions))

    def forget(self, slot: int) -> None:
        ring = self._rings.pop(slot, None)
        if ring is None:
            return
        victims = self._latest(ring, ring.start, ring.end)
        self.keys[victims] = DELETED
        self.slots[victims] = -1
        self.live -= len(victims)
        self.deleted += len(victims)

    def slot_size(self, slot: int) -> int:
        ring = self._rings.get(slot)
        return ring.size if ring is not None else 0

    # --- internals ----------------------------------------------------------------------------------

    def _latest(self, ring: _Ring, first: int, stop: int) -> Positions:
        """Positions of ring elements [first, stop) that are their entry's latest touch, oldest first."""
        sequence = np.arange(first, stop, dtype=np.int64)
        positions = ring.positions[sequence % len(ring.positions)].astype(np.intp)
        latest = self.stamps[positions] == (sequence & 0xFFFFFFFF).astype(np.uint32)
        found: Positions = positions[latest]
        return found

    def _append(self, ring: _Ring, positions: Positions) -> None:
        count = len(positions)
        if ring.end - ring.start + count > len(ring.positions):
            live = self._latest(ring, ring.start, ring.end)
            length = len(ring.positions)
            while length < 2 * (len(live) + count):
                length *= 2
            ring.positions = np.empty(length, dtype=np.int32)
            ring.positions[: len(live)] = live
            self.stamps[live] = np.arange(len(live), dtype=np.uint32)
            ring.start, ring.end = 0, len(live)
        length = len(ring.positions)
        first = ring.end % length
        stamp = ring.end & 0xFFFFFFFF
        if first + count <= length and stamp + count <= 0x100000000:  # neither the ring nor the stamps wrap
            ring.positions[first : first + count] = positions
            self.stamps[positions] = np.arange(stamp, stamp + count, dtype=np.uint32)
        else:
            sequence = np.arange(ring.end, ring.end + count, dtype=np.int64)
            ring.positions[sequence % length] = positions
            self.stamps[positions] = (sequence & 0xFFFFFFFF).astype(np.uint32)
        ring.end += count

    def _evict(self, ring: _Ring, count: int) -> None:
        while count > 0 and ring.start < ring.end:
            stop = min(ring.start + count, ring.end)
            victims = self._latest(ring, ring.start, stop)
            ring.start = stop
            self.keys[victims] = DELETED
            self.slots[victims] = -1
            ring.size -= len(victims)
            self.live -= len(victims)
            self.deleted += len(victims)
            count -= len(victims)

    def _place(self, keys: Keys, slots: npt.NDArray[np.int32]) -> Positions:
        """Put new entries into the first free bucket of their probe runs; returns their positions."""
        placed = np.empty(len(keys), dtype=np.intp)
        pending = np.arange(len(keys), dtype=np.intp)
        start = (keys & self._mask64).astype(np.intp)
        table = self.keys
        while len(pending):
            window = (start[pending, None] + _OFFSETS) & self.mask
            free = table[window] <= DELETED
            found = free.any(axis=1)
            target = window[np.arange(len(pending)), free.argmax(axis=1)]
            start[pending[~found]] += _WINDOW
            claimants, wanted = pending[found], target[found]
            if len(wanted) <= 64 and len(set(wanted.tolist())) == len(wanted):  # no two want one bucket
                buckets, first = wanted, np.arange(len(wanted))
            else:
                buckets, first = np.unique(wanted, return_index=True)
            winners = claimants[first]
            self.deleted -= int(np.count_nonzero(table[buckets] == DELETED))
            table[buckets] = keys[winners]
            self.slots[buckets] = slots[winners]
            placed[winners] = buckets
            lost = np.ones(len(claimants), dtype=np.bool_)
            lost[first] = False
            start[claimants[lost]] = wanted[lost] + 1
            pending = np.concatenate((pending[~found], claimants[lost]))
        return placed

    def _rebuild(self, expected_live: int) -> None:
        """Drop deleted buckets; double the table while the live entries would fill over 30 % of it."""
        bits = self.bits
        while expected_live > _GROW_AT * (1 << bits):
            bits += 1
        old_keys, old_slots = self.keys, self.slots
        live = np.flatnonzero(old_keys > DELETED)
        self._allocate(bits)
        moved = np.full(len(old_keys), -1, dtype=np.int32)
        for begin in range(0, len(live), _REBUILD_CHUNK):
            chunk = live[begin : begin + _REBUILD_CHUNK]
            moved[chunk] = self._place(old_keys[chunk], old_slots[chunk])
        del old_keys, old_slots
        for ring in self._rings.values():
            # the old stamps are gone with the old table: keep each entry's latest element in ring order
            sequence = np.arange(ring.start, ring.end, dtype=np.int64)
            old_positions = ring.positions[sequence % len(ring.positions)].astype(np.intp)
            new_positions = moved[old_positions]
            _, last_index = np.unique(new_positions[::-1], return_index=True)
            keep = np.sort(len(new_positions) - 1 - last_index)
            current = new_positions[keep]
            length = len(ring.positions)
            while length < 2 * len(current):
                length *= 2
            ring.positions = np.empty(length, dtype=np.int32)
            ring.positions[: len(current)] = current
            self.stamps[current] = np.arange(len(current), dtype=np.uint32)
            ring.start, ring.end, ring.size = 0, len(current), len(current)
