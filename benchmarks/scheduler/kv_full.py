"""Decision latency of the built-in default when every endpoint's KV cache is full: the path that prices the
recomputation a pick would cause and the turnovers of the cache before it fits (plugins/kv_demand.py), which
`run.py` does not take (its pool reports no cache size).

    python benchmarks/scheduler/kv_full.py [--endpoints 100] [--prompt-chars 8000] [--picks 2000] [--seed 1]

Same pool, warm-up and timed prompts as `run.py --shapes chat`, plus per endpoint a cache of 4,800 blocks of 16
tokens and KV charged by requests in flight of 70,000-90,000 tokens, so every candidate overflows. Prints the
decision p50 / p99 in ms. To compare two source trees, run this file with each tree's interpreter from that tree
(it imports `epp` from the current directory).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import pool_arguments, timed_requests, warmed

from epp.plugins.latency import PredictedTTFTProducer


def main() -> int:
    parser = pool_arguments(__doc__)
    args = parser.parse_args()
    table, scheduler, shared = warmed(args.endpoints, args.prompt_chars, args.seed, "chat", None)
    rng = np.random.default_rng(args.seed)
    slots = table.live_slots()
    table.cache_num_blocks[slots] = 4800.0
    table.cache_block_size[slots] = 16.0
    producers = [p for p in scheduler.producers if isinstance(p, PredictedTTFTProducer)]
    if not producers:
        raise SystemExit("the built-in default has no predicted-ttft-producer: nothing to measure")
    kv_tokens = producers[0].kv_tokens
    kv_tokens[slots] = rng.uniform(70_000, 90_000, len(slots))
    samples = []
    for req in timed_requests(shared, args.prompt_chars, args.picks):
        started = time.perf_counter()
        result = scheduler.schedule(req, table, slots)
        samples.append(time.perf_counter() - started)
        scheduler.pre_request(req, result, table)
        kv_tokens[slots] = np.minimum(kv_tokens[slots], 90_000.0)  # picks charge KV: keep the pool as it was
    samples.sort()
    p50, p99 = statistics.median(samples) * 1e3, samples[int(len(samples) * 0.99)] * 1e3
    shape = f"kv full, {args.endpoints} endpoints, {args.prompt_chars}-char chat prompt"
    print(f"{shape}: decision p50 {p50:.4f} ms, p99 {p99:.4f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
