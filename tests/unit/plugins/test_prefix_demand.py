"""PrefixDemand.common_blocks against a plain restatement of its rule, on few candidates (counted in Python) and
many (counted with numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from epp.plugins.prefix_demand import CHECKPOINTS, MIN_REQUESTS_PER_CANDIDATE, PrefixDemand


def restated(demand: PrefixDemand, hashes: list[int], blocks: list[int]) -> int:
    """The rule of docs/plugins.md, one candidate at a time."""
    n = len(blocks)
    if not n or max(blocks) == 0:
        return 0
    ordered = sorted(blocks)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    held_by_half = int(median) if sum(1 for b in blocks if b) * 2 >= n else 0
    reach = min(max(blocks), len(hashes))
    for depth in CHECKPOINTS:
        if depth > reach:
            continue
        entry = demand.counts.get(hashes[depth - 1])
        seen = 0.0 if entry is None else entry[0] * math.exp(-demand._decay * (demand.requests - entry[1]))
        needed = seen / demand.total * n
        if needed <= 1.0 or seen < MIN_REQUESTS_PER_CANDIDATE * n:
            continue
        holding = [b for b in blocks if b >= depth]
        if needed > len(holding):
            return max(depth, min(holding) if len(holding) > 1 else depth, held_by_half)
    return held_by_half


@pytest.mark.parametrize("candidates", [1, 2, 4, 7, 64, 65, 200])
def test_common_blocks_follows_its_rule(candidates: int) -> None:
    rng = np.random.default_rng(candidates)
    for _ in range(300):
        demand = PrefixDemand()
        prompts = [[int(h) for h in rng.integers(2, 1 << 62, 300)] for _ in range(3)]
        for _ in range(int(rng.integers(1, 6 * candidates + 20))):  # traffic, mostly through the first prompt
            prompt = prompts[0] if rng.random() < 0.7 else prompts[int(rng.integers(1, 3))]
            demand.count(prompt, int(rng.integers(1, 300)))
        hashes = prompts[0][: int(rng.integers(1, 300))]
        depths = np.array([0, 1, 3, 4, 5, 8, 16, 20, 64, 256, 300])
        blocks = rng.choice(depths, candidates) * (rng.random(candidates) < rng.random())
        assert demand.common_blocks(hashes, blocks.astype(np.int64)) == restated(demand, hashes, blocks.tolist())
