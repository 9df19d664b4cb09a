"""How much of each endpoint's queued prefill it has probably computed already (used by plugins/latency.py).

The predicted-TTFT producer charges a request's uncached prompt tokens to its endpoint at the pick and
releases them at the first streamed chunk. In between, the endpoint is computing them: an endpoint with one
long prompt in prefill looks exactly as loaded half a second later as at the pick, so new requests avoid it
for the whole prefill while it is nearly done. This estimates the part already computed: since the last pick
or release, DRAIN_SHARE x elapsed / (seconds per prefill token) tokens, capped at DRAIN_CAP of one queued
request's tokens — only the head of an engine's queue is in prefill, the requests behind it wait, so the
estimate never claims more than the head (a long queue is not priced as drained).

With --shared-state the queue also holds other replicas' requests (epp.shared sums them in): a peer's request
that reaches its first token must take the part of the head counted as computed with it, as this replica's own
do, or that part is credited to the next request and a busy endpoint looks nearly free (two sharing replicas
measured TTFT p90 1.17-1.28x one replica's on unique prompts, 8 servers). So each replica publishes, per
endpoint, the uncached tokens of its requests that reached their first token, a running total (`prefilled`);
its growth is what peers saw finish. The queue's net change would not do: one report may carry a finished
head and a new request of the same length.

DRAIN_SHARE is below 1 because the learned prefill rate is what a request's own prefill costs when it is
alone in a step; a step that also decodes the running batch computes fewer prompt tokens. Measured on the
virtual fleet (benchmarks/routing/virtual_fleet.py, 8 servers, loads 1 and 2, seeds 1 and 2): 0.5 beat 1.0
on the mixed-speed, slowdown and shared-prefix workloads and equalled it elsewhere.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from epp.datastore.table import SlotArray

DRAIN_SHARE = 0.5
DRAIN_CAP = 0.9

Floats = npt.NDArray[np.float64]
# as 0-d arrays: an operand numpy need not convert from a Python float on every call
_SHARE, _CAP, _ONE = np.array(DRAIN_SHARE), np.array(DRAIN_CAP), np.array(1.0)


class QueuedPrefillDrain:
    """Per endpoint slot: tokens of the queued prefill counted as computed, and when that was last brought
    up to date."""

    def __init__(self, capacity: int) -> None:
        self.drained = np.zeros(capacity)
        self.updated_at = np.zeros(capacity)
        #: uncached tokens of the requests sent there that reached their first token, ever (summed over replicas)
        self.prefilled = np.zeros(capacity)
        #: `prefilled` as last seen here (peers add to it)
        self.known_prefilled = np.zeros(capacity)

    def reset(self, slot: int, now: float) -> None:
        self.drained[slot] = 0.0
        self.updated_at[slot] = now
        self.prefilled[slot] = self.known_prefilled[slot] = 0.0

    def released(self, slot: int, tokens: float) -> None:
        """One of this replica's requests reached its first token (after `advance_one` on the queue with it)."""
        self.finished(slot, tokens)
        prefilled = self.prefilled.item(slot) + tokens  # a Python float: the same sum without a numpy scalar
        self.prefilled[slot] = self.known_prefilled[slot] = prefilled

    def peers_finished(self, slot: int) -> None:
        """Other replicas' part of the queue at `slot` changed (after `advance_one` on the queue as it is now): what
        they saw reach its first token leaves the drained count."""
        finished = float(self.prefilled[slot] - self.known_prefilled[slot])
        if finished > 0:
            self.finished(slot, finished)
        self.known_prefilled[slot] = self.prefilled[slot]

    def advance(
        self, slots: SlotArray, queued: Floats, queued_requests: Floats, seconds_per_token: Floats | float, now: float
    ) -> Floats:
        """Bring the slots' drained tokens up to `now` and return them (aligned with `slots`); `seconds_per_token`
        per slot, or one float for all."""
        drained = self.drained[slots]
        elapsed = now - self.updated_at[slots]
        elapsed *= _SHARE
        if isinstance(seconds_per_token, float):
            elapsed /= max(seconds_per_token, 1e-9)
        else:
            elapsed /= np.maximum(seconds_per_token, 1e-9)
        drained += elapsed
        head = queued * _CAP
        head /= np.maximum(queued_requests, _ONE)
        np.minimum(drained, head, out=drained)
        self.drained[slots] = drained
        self.updated_at[slots] = now
        return drained

    def advance_one(
        self, slot: int, queued: float, queued_requests: float, seconds_per_token: float, now: float
    ) -> None:
        elapsed = now - self.updated_at.item(slot)
        drained = self.drained.item(slot) + elapsed * DRAIN_SHARE / max(seconds_per_token, 1e-9)
        self.drained[slot] = min(drained, queued * DRAIN_CAP / max(queued_requests, 1.0))
        self.updated_at[slot] = now

    def finished(self, slot: int, tokens: float) -> None:
        """A queued request produced its first token: its tokens leave the queue and the drained count."""
        self.drained[slot] = max(self.drained.item(slot) - tokens, 0.0)
