"""Load that is never stale: the last scrape corrected by what this EPP routed and what finished since.

A scrape says how many requests an endpoint had waiting and running, and how full its KV cache was, at the
moment it was taken. Every pick after it adds load the scrape cannot show until the next one, so scorers that
read the raw scrape send a whole scrape interval's requests to the endpoint that looked least loaded (a herd).
Here each signal is the scrape plus the change of the EPP's own in-flight columns since the scrape was sent
(`scrape_inflight_*`, recorded by the scrape plane):

- delta = in-flight requests now - in-flight requests when the scrape was sent (routed since - finished since);
- waiting = max(0, scraped waiting + delta): a new request waits until the engine's next step admits it,
  and a finished one lets a waiting one run;
- running = max(0, scraped waiting + scraped running + delta) - waiting (finished requests leave the batch
  once the queue is empty);
- KV usage = scraped usage + (in-flight prompt tokens now - then) / (KV blocks x block size), in [0, 1]; an
  endpoint whose cache size is not known yet keeps the scraped value.

Never-scraped endpoints (metrics_time 0) start from zeros, so they are corrected by their whole in-flight load.
The reference's scorers keep their formulas; only their inputs are these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from epp.datastore.table import EndpointTable, FloatColumn, SlotArray
from epp.scheduling.types import CycleState, StateKey


@dataclass(frozen=True, slots=True)
class FreshLoad:
    """Corrected load signals, aligned with the candidates they were computed for."""

    waiting: FloatColumn
    running: FloatColumn
    kv_usage: FloatColumn


def fresh_load(table: EndpointTable, candidates: SlotArray) -> FreshLoad:
    """The corrected waiting queue, running batch and KV usage of `candidates`."""
    delta = table.inflight_requests.take(candidates)
    delta -= table.scrape_inflight_requests.take(candidates)
    scraped_waiting = table.waiting_queue.take(candidates)
    total = table.running_requests.take(candidates)
    total += scraped_waiting
    total += delta
    np.maximum(total, 0.0, out=total)
    waiting = scraped_waiting
    waiting += delta
    np.clip(waiting, 0.0, total, out=waiting)
    total -= waiting
    kv = table.kv_usage.take(candidates)
    capacity = table.cache_num_blocks.take(candidates)
    capacity *= table.cache_block_size.take(candidates)
    known = capacity > 0
    if known.any():
        tokens = table.inflight_prompt_tokens.take(candidates)
        tokens -= table.scrape_inflight_prompt_tokens.take(candidates)
        kv += np.divide(tokens, capacity, out=np.zeros_like(tokens), where=known)
        np.clip(kv, 0.0, 1.0, out=kv)
    return FreshLoad(waiting, total, kv)


FRESH_KEY: StateKey[tuple[SlotArray, FreshLoad]] = StateKey("fresh-load")


def cached_fresh_load(state: CycleState, candidates: SlotArray) -> FreshLoad:
    """`fresh_load` computed once per cycle and candidate array (scorers of one profile share it)."""
    cached = state.read(FRESH_KEY)
    if cached is not None and cached[0] is candidates:
        return cached[1]
    load = fresh_load(state.table, candidates)
    state.write(FRESH_KEY, (candidates, load))
    return load
