"""How much of the traffic passes through a prefix, and so how many endpoints should hold it.

Affinity (keeping a prefix's requests where the prefix is cached) saves prefill and KV space as long as the
endpoints that hold the prefix can carry its traffic. A prefix that a large share of all requests starts with
(one application's system prompt, a chat template) is the opposite case: pulling its requests towards the few
endpoints that happen to hold it first piles the pool's traffic onto them, and the others never get the
requests that would let them hold it too. Such a prefix is *common*: every endpoint should hold it, so none is
preferred for holding it and none is charged for lacking it.

PrefixDemand counts, per prefix, the requests that pass through it: the prefix of a request's first 4, 8, 16, ...
256 blocks (its checkpoints), each count decaying by half every HALF_LIFE requests. A prefix is common when its
share of the traffic times the number of candidates exceeds the candidates that hold it: with a share `f` of
the traffic, a pool of `n` endpoints needs about `f x n` of them to serve it. A prefix seen fewer than
MIN_REQUESTS_PER_CANDIDATE x n times lately is not common whatever its share: a few tenants' first requests
are a large share of little traffic, and one endpoint can carry them. The common part then reaches as far as
every holder of that checkpoint holds the request (a system prompt ends between two checkpoints).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right

import numpy as np
import numpy.typing as npt

#: block depths at which a request's prefix is counted
CHECKPOINTS = (256, 128, 64, 32, 16, 8, 4)
#: requests after which a count has halved
HALF_LIFE = 1000.0
#: requests per candidate a prefix must have been seen by lately before it can be common
MIN_REQUESTS_PER_CANDIDATE = 2.0
#: prefixes remembered before the ones seen about once are dropped
MAX_PREFIXES = 65_536
#: by blocks known (up to the deepest checkpoint): the checkpoints within them, deepest first
#: candidates up to this many are counted in Python (sorted), more with numpy
_SORTED_UP_TO = 64
_WITHIN = [tuple(depth for depth in CHECKPOINTS if depth <= reach) for reach in range(CHECKPOINTS[0] + 1)]


class PrefixDemand:
    """Decayed request counts per checkpoint prefix (keyed by the chained hash of its last block)."""

    def __init__(self) -> None:
        self.requests = 0
        #: hash -> (count at `seen`, request number when last counted)
        self.counts: dict[int, tuple[float, int]] = {}
        #: the decayed count of all requests (the denominator of a share)
        self.total = 0.0
        self._decay = math.log(2.0) / HALF_LIFE
        #: what one request's decay multiplies a count by
        self._step = math.exp(-self._decay)

    def count(self, hashes: list[int], total_blocks: int) -> None:
        """Count one request whose block hashes (computed so far) are `hashes`, of `total_blocks` blocks."""
        self.requests = now = self.requests + 1
        self.total = self.total * self._step + 1.0
        reach = min(len(hashes), total_blocks, CHECKPOINTS[0])
        if reach < CHECKPOINTS[-1]:
            return
        counts = self.counts
        decay = self._decay
        exp = math.exp
        for depth in _WITHIN[reach]:
            key = hashes[depth - 1]
            previous = counts.get(key)
            if previous is None:
                counts[key] = (1.0, now)
            else:
                counts[key] = (previous[0] * exp(-decay * (now - previous[1])) + 1.0, now)
        if len(counts) > MAX_PREFIXES:
            self._forget()

    def count_common(self, hashes: list[int], total_blocks: int, blocks: npt.NDArray[np.int64]) -> tuple[int, int, int]:
        """`count(hashes, total_blocks)`, then the common part as `common_blocks` finds it. Returns (the common
        blocks, the fewest blocks a candidate holds when the sorted counts give it, else 0, the most blocks a
        candidate holds)."""
        self.count(hashes, total_blocks)
        return self._common(hashes, blocks)

    def share(self, key: int) -> float:
        """The share of recent requests that passed through the prefix whose last block hash is `key`."""
        return self.recent(key) / self.total if self.total > 0 else 0.0

    def recent(self, key: int) -> float:
        """The decayed count of requests that passed through the prefix whose last block hash is `key`."""
        entry = self.counts.get(key)
        if entry is None:
            return 0.0
        if entry[1] == self.requests:  # counted by this request: no decay yet
            return entry[0]
        return entry[0] * math.exp(-self._decay * (self.requests - entry[1]))

    def common_blocks(self, hashes: list[int], blocks: npt.NDArray[np.int64]) -> int:
        """The deepest checkpoint of this request held by fewer candidates than its traffic needs (`blocks`: the
        request's blocks each candidate holds); 0 when there is none."""
        return self._common(hashes, blocks)[0]

    def _common(self, hashes: list[int], blocks: npt.NDArray[np.int64]) -> tuple[int, int, int]:
        """(common blocks, fewest held when the sorted counts give it else 0, most held)."""
        n = len(blocks)
        if not n:
            return 0, 0, 0
        # A few candidates are counted in Python on their sorted counts (a numpy call costs more than the work);
        # many with numpy. Either way: the deepest count, the median's when at least half hold some, and per
        # checkpoint how many hold it and the least a holder holds.
        ordered: list[int] = []
        fewest = 0
        if n <= _SORTED_UP_TO:
            ordered = sorted(blocks.tolist())
            fewest, deepest = ordered[0], ordered[-1]
        else:
            deepest = int(blocks[blocks.argmax()])
        if deepest == 0:  # no candidate holds any of it
            return 0, fewest, 0
        # what at least half the candidates hold is common too (one system prompt everyone already has)
        holding_any = n - bisect_right(ordered, 0) if ordered else int(np.count_nonzero(blocks))
        held_by_half = int(_median(ordered, blocks)) if holding_any * 2 >= n else 0
        reach = min(deepest, len(hashes), CHECKPOINTS[0])
        if reach < CHECKPOINTS[-1]:
            return held_by_half, fewest, deepest
        least = MIN_REQUESTS_PER_CANDIDATE * n
        counts, now, total = self.counts, self.requests, self.total
        for depth in _WITHIN[reach]:
            entry = counts.get(hashes[depth - 1])
            if entry is None:
                continue  # seen 0 times: below `least`
            seen = entry[0] if entry[1] == now else entry[0] * math.exp(-self._decay * (now - entry[1]))
            needed = seen / total * n
            if needed <= 1.0 or seen < least:  # one holder is enough, and it has one
                continue
            if ordered:
                first = bisect_left(ordered, depth)
                holders = n - first
                if needed > holders:
                    return max(depth, ordered[first] if holders > 1 else depth, held_by_half), fewest, deepest
            else:
                holding = blocks >= depth
                holders = int(np.count_nonzero(holding))
                if needed > holders:
                    least_held = int(blocks[holding].min()) if holders > 1 else depth
                    return max(depth, least_held, held_by_half), fewest, deepest
        return held_by_half, fewest, deepest

    def _forget(self) -> None:
        now = self.requests
        decay = self._decay
        self.counts = {k: v for k, v in self.counts.items() if v[0] * math.exp(-decay * (now - v[1])) >= 1.5}


def _median(ordered: list[int], values: npt.NDArray[np.int64]) -> float:
    """The median of `values` (`ordered`: the same sorted, or empty), as np.median gives it, without its overhead
    (it sorts a copy through several layers of Python)."""
    n = len(values)
    middle = n // 2
    if ordered:
        return float(ordered[middle]) if n % 2 else float(ordered[middle - 1] + ordered[middle]) / 2
    if n % 2:
        return float(np.partition(values, middle)[middle])
    low, high = np.partition(values, (middle - 1, middle))[middle - 1 : middle + 1]
    return float(low + high) / 2
