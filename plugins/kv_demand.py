"""What the requests in flight on each endpoint ask of its KV cache, beyond what it holds (used by plugins/latency.py).

Past saturation an engine's queue is often not waiting for prefill but for KV space: vLLM admits a waiting request
only when its blocks fit, so with the cache full each admission waits for running requests to finish. The queued
prefill then says little about the wait (measured on the virtual fleet, 8 servers x 4,800 blocks, `low` at twice
capacity: the engine filled its cache five seconds in, and from then the seconds per queued token changed by a
factor of two while the model relearned them from TTFTs that arrive one TTFT late).

The KV the requests this EPP sent there will hold until they end (uncached prompt plus expected output, charged
at the pick and released at the end; or the scraped usage when that is more: another replica's requests, shared
prefixes), plus this request's own need, over the cache's size, minus 1, is how many times the running requests
must turn the cache over before this request fits: `full`. A wait of `per_turnover` seconds per turnover (one
learned coefficient of the TTFT model, about a request's lifetime) prices it, and it is 0 on every endpoint whose
cache has room, so a pool below saturation predicts as before.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from epp.datastore.table import SlotArray

Floats = npt.NDArray[np.float64]
_ZERO = np.array(0.0)


def kv_beyond_cache(
    capacity: Floats, kv_usage: Floats, kv_tokens: Floats, candidates: SlotArray, uncached: Floats, output: float
) -> tuple[Floats, Floats] | None:
    """Per candidate: the tokens of KV its requests in flight and this one (`uncached` + `output`) need beyond its
    cache, at least 0, and that as a fraction of the cache (`full`); None when no candidate's cache overflows or a
    cache size has not been scraped yet. `capacity` (cache tokens) and `kv_usage` (scraped) are the candidates',
    `kv_tokens` the column of every slot."""
    if capacity[capacity.argmin()] <= 0:  # a cache size not scraped yet: nothing to compare with
        return None
    beyond = kv_tokens[candidates]
    np.maximum(beyond, kv_usage * capacity, out=beyond)  # another replica's, reported
    beyond += uncached
    beyond += output
    beyond -= capacity
    if beyond[beyond.argmax()] <= 0:
        return None
    np.maximum(beyond, _ZERO, out=beyond)
    return beyond, beyond / capacity
