"""Each endpoint's recent share of this EPP's picks, and how far a starved one falls short of a floor (used by
plugins/latency.py and plugins/latency_scorer.py).

Pricing every candidate by its predicted TTFT sends a slower server (half the speed, or degraded mid-run) only
the requests a faster one cannot take sooner: at moderate load almost none, so it sits nearly idle while
the fast servers' batches grow (measured on the virtual fleet's mixed-speed pool: an eighth of a fast
server's requests). A GPU that gets nothing is one an operator removes; `shortfall` measures how far each
candidate's recent picks fall below SHARE_FLOOR of the busiest candidate's, and the scorer divides its predicted
TTFT by 1 + STARVED_PULL x that shortfall, so it is chosen again before it starves (one with no recent picks
at all is chosen next). Endpoints at or above the floor are priced by
the prediction alone.

Recent = exponentially decayed: a pick weighs half after WINDOW_PER_ENDPOINT x (endpoints) later picks. The
decay is kept as a growing weight of new picks (one multiplication per pick, not one per endpoint), rescaled
before it overflows; shares are ratios, so the scale never shows. With --shared-state the replicas add up their
pick counts (`total`, a shared column): the picks a peer made count here as they are heard of, so replicas do
not each pull towards an endpoint the others already feed.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from epp.datastore.table import SlotArray

#: the least share of the busiest candidate's recent picks a candidate is kept at (max/min share at most 1/this)
SHARE_FLOOR = 0.8
#: later picks, per endpoint, after which a pick weighs half
WINDOW_PER_ENDPOINT = 32.0
#: picks, per endpoint, before shares are compared at all (a new pool's first requests are spread by the prediction)
WARMUP_PER_ENDPOINT = 8
#: a candidate's predicted TTFT is divided by 1 + this x its shortfall: half the floor's picks divides it by 1 + this,
#: none at all makes it the pick
STARVED_PULL = 4.0
_RESCALE_ABOVE = 1e150


class PickShare:
    """Decayed pick counts per endpoint slot."""

    def __init__(self, capacity: int) -> None:
        self.recent = np.zeros(capacity)
        self.weight = 1.0
        self.picks = 0
        #: picks ever made per endpoint (summed over replicas with --shared-state), and the part counted in `recent`
        self.total = np.zeros(capacity)
        self.seen = np.zeros(capacity)

    def reset(self, slot: int) -> None:
        """A new endpoint in `slot`: counted at the floor, so it is neither pulled nor pulls the others away."""
        self.recent[slot] = float(self.recent.max()) * SHARE_FLOOR
        self.seen[slot] = self.total[slot]

    def picked(self, slot: int, endpoints: int) -> None:
        """This replica picked `slot`."""
        # .item() and a Python float add: the same sums without a numpy scalar each
        self.total[slot] = self.total.item(slot) + 1.0
        self.seen[slot] = self.seen.item(slot) + 1.0
        self._count(slot, 1.0, endpoints)

    def peers_picked(self, slot: int, endpoints: int) -> None:
        """Other replicas' part of `total` changed at `slot`: what they picked there since counts now (a peer that
        left takes its part of `total` with it, not its picks out of `recent`)."""
        new = float(self.total[slot] - self.seen[slot])
        self.seen[slot] = self.total[slot]
        if new > 0:
            self._count(slot, new, endpoints)

    def _count(self, slot: int, picks: float, endpoints: int) -> None:
        self.picks += int(picks)
        self.weight *= 2.0 ** (picks / (WINDOW_PER_ENDPOINT * max(endpoints, 1)))
        self.recent[slot] = self.recent.item(slot) + picks * self.weight
        if self.weight > _RESCALE_ABOVE:
            self.recent /= self.weight
            self.weight = 1.0

    def shortfall(self, candidates: SlotArray) -> npt.NDArray[np.float64] | None:
        """Per candidate, how far its recent picks fall below SHARE_FLOOR of the busiest candidate's, relative to its
        own recent picks: (floor - recent) / recent, 0 at or above the floor, without bound as recent goes to 0 (at
        most 100 x the floor); None when no candidate falls short."""
        if self.picks < WARMUP_PER_ENDPOINT * len(candidates):
            return None
        recent = self.recent[candidates]
        floor = float(recent[recent.argmax()]) * SHARE_FLOOR
        if floor <= 0 or float(recent[recent.argmin()]) >= floor:
            return None
        short = floor - recent
        short /= np.maximum(recent, floor / 100)
        np.maximum(short, 0.0, out=short)
        return short
