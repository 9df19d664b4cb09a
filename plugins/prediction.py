"""What the predicted-TTFT producer (plugins/latency.py) hands its scorer for one request: per candidate, the
predicted time to first token and its parts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from epp.datastore.table import SlotArray


@dataclass(slots=True)
class Prediction:
    """Predicted TTFT (seconds) and this request's uncached prompt tokens per candidate, aligned."""

    candidates: SlotArray
    seconds: npt.NDArray[np.float64]
    uncached: npt.NDArray[np.float64]
    queued: npt.NDArray[np.float64]
    decoding: npt.NDArray[np.float64]
    #: the fraction of the request's prefix blocks each candidate holds
    held: npt.NDArray[np.float64]
    #: requests this EPP sent there that have not produced their first token
    waiting: npt.NDArray[np.float64]
    #: the part of `seconds` spent behind the queue (the rest is this request's own prefill and one step)
    queueing: npt.NDArray[np.float64]
    #: output tokens this request is expected to generate (its max_tokens, at most the mean seen so far)
    output_tokens: float
    #: seconds per uncached prompt token on each candidate (one float when it is the same on every candidate)
    per_token: npt.NDArray[np.float64] | float
    #: the fraction of the request's blocks that is a common prefix (see PrefixDemand): no candidate is preferred
    #: for holding it ...
    common: float
    #: ... nor charged for lacking it: seconds to take off each candidate's prediction when scoring (None: none)
    lift: npt.NDArray[np.float64] | None
    #: seconds of recomputation this request would cause there by outgrowing the KV cache (not part of its own
    #: TTFT: the engine preempts running requests and computes their context again)
    overflow: npt.NDArray[np.float64] | None
    #: how far each candidate's recent share of the picks falls below the floor (plugins/pick_share.py; None: none)
    shortfall: npt.NDArray[np.float64] | None = None
    #: how many times each candidate's KV cache must turn over before this request fits (plugins/kv_demand.py; None:
    #: no candidate's cache overflows)
    full: npt.NDArray[np.float64] | None = None
    #: whether some candidate holds more of the prompt than the common prefix (False: the affinity discounts none)
    affine: bool = True

    def at(self, candidates: SlotArray, values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """`values` (aligned with the producer's candidates) for `candidates`, a sorted subset of them."""
        if candidates is self.candidates:
            return values
        return values[np.searchsorted(self.candidates, candidates)]
