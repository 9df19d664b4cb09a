"""Decision latency of the built-in default when every endpoint has just streamed a response chunk: the path that
prices the engine step in progress (plugins/step_phase.py), which `run.py` does not take (its pool streams
nothing, so every step window has passed and the pick skips it).

    python benchmarks/scheduler/step_busy.py [--endpoints 100] [--prompt-chars 8000] [--picks 2000] [--seed 1]

Same pool, warm-up and timed prompts as `run.py --shapes chat`; the producer's clock is held still and every
endpoint's last chunk is placed 0-80 % of the step window before it, so every candidate is within its window at
every pick. Prints the decision p50 / p99 in ms. With `--interleave` the same process alternates blocks of 100
picks with the term priced and with its coefficient at 0 (the pick then skips it) and prints both p50s and their
difference: the term's own cost, free of the machine's drift between processes. A tree without the step phase
runs the same picks (nothing to place). To compare two source trees, run this file with each tree's interpreter
from that tree (it imports `epp` from the current directory).
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

NOW = 1000.0


def main() -> int:
    parser = pool_arguments(__doc__)
    parser.add_argument("--interleave", action="store_true", help="with and without the term, in one process")
    args = parser.parse_args()
    table, scheduler, shared = warmed(args.endpoints, args.prompt_chars, args.seed, "chat", None)
    rng = np.random.default_rng(args.seed)
    slots = table.live_slots()
    producers = [p for p in scheduler.producers if isinstance(p, PredictedTTFTProducer)]
    if not producers:
        raise SystemExit("the built-in default has no predicted-ttft-producer: nothing to measure")
    producer = producers[0]
    producer.clock = lambda: NOW
    phase = getattr(producer, "phase", None)
    if phase is not None:
        from epp.plugins.step_phase import STEP_WINDOW

        for slot in slots.tolist():
            phase.chunk(slot, NOW - rng.uniform(0.0, 0.8) * STEP_WINDOW)
    coefficients = producer.model.coefficients
    learned = coefficients[5] if phase is not None else 0.0
    samples: dict[bool, list[float]] = {True: [], False: []}
    for i, req in enumerate(timed_requests(shared, args.prompt_chars, args.picks)):
        priced = not args.interleave or (i // 100) % 2 == 0
        if phase is not None:
            coefficients[5] = learned if priced else 0.0
        started = time.perf_counter()
        result = scheduler.schedule(req, table, slots)
        samples[priced].append(time.perf_counter() - started)
        scheduler.pre_request(req, result, table)
    shape = f"{args.endpoints} endpoints, {args.prompt_chars}-char chat prompt"
    where = "every endpoint within its step window" if phase is not None else "no step phase in this tree"
    with_term = sorted(samples[True])
    p50, p99 = statistics.median(with_term) * 1e3, with_term[int(len(with_term) * 0.99)] * 1e3
    print(f"{where}, {shape}: decision p50 {p50:.4f} ms, p99 {p99:.4f} ms")
    if samples[False]:
        without = statistics.median(samples[False]) * 1e3
        print(f"the same process without the term (coefficient 0): p50 {without:.4f} ms; the term adds "
              f"{(p50 - without) * 1e3:.2f} µs per decision")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
