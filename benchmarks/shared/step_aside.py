"""What keeping replicas apart costs a pick: the work predicted-ttft-scorer adds with --shared-state (the pick rate,
the reach, the candidates' owners, the step-aside; plugins/peer_picks.py) timed alone, beside the
built-in default profile's whole decision without it, for pools of several sizes, interleaved round by round.
(Timing whole decisions with it on and off would compare different picks: it sends requests elsewhere, and the
prefix index and queues then differ.) Prints µs per pick, medians over the rounds.

`python benchmarks/shared/step_aside.py [--rounds 5] [--decisions 2000] [--endpoints 8,64,256]`
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import orjson

from epp.config.schema import default_config
from epp.datastore.table import Endpoint, EndpointTable
from epp.director import Director
from epp.plugins.peer_picks import Owners, PickRate, reach, step_aside
from epp.requests.openai import parse_openai_body
from epp.scheduling.framework import build_scheduler


def router(endpoints: int) -> Director:
    table = EndpointTable(endpoints)
    for i in range(endpoints):
        table.add(Endpoint(f"10.{i // 250}.{i % 250}.1", 8000, name=f"server-{i}"))
    scheduler = build_scheduler(default_config(), table)
    return Director(table, scheduler, hooks=scheduler)


def step_aside_cost(director: Director, picks: int) -> float:
    """µs per pick of what the scorer adds, on every endpoint of the director's pool as candidates."""
    table = director.table
    candidates = table.live_slots()
    rng = np.random.default_rng(1)
    seconds = rng.uniform(0.05, 0.2, len(candidates))
    per_pick = rng.uniform(0.01, 0.06, len(candidates))
    rate, owners_of = PickRate(), Owners()
    started = time.perf_counter()
    for i in range(picks):
        rate.pick(1.0 + i * 0.01)
        share = reach(2, 0.02, rate.per_second())
        owners = owners_of.of(table, 2).take(candidates)
        step_aside(seconds, per_pick, owners, 1, share)
    return (time.perf_counter() - started) / picks * 1e6


def per_decision(director: Director, decisions: int) -> float:
    bodies = [orjson.dumps({"model": "m", "prompt": f"group {i % 16} " * 200 + f"q{i}", "max_tokens": 8}) for i in
              range(decisions)]  # fmt: skip
    parsed = [parse_openai_body(raw, "/v1/completions") for raw in bodies]
    started = time.perf_counter()
    for i, raw in enumerate(bodies):
        decision = director.decide(f"r{i}", {}, parsed[i], raw, None)
        director.complete(decision, None)
    return (time.perf_counter() - started) / decisions * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--endpoints", default="8,64,256")
    args = parser.parse_args()
    print("| endpoints | decision µs (default profile) | step-aside µs | share of the decision (rounds) |")
    print("|---:|---:|---:|---|")
    for endpoints in (int(n) for n in args.endpoints.split(",")):
        decisions, added, shares = [], [], []
        for _ in range(args.rounds):
            director = router(endpoints)
            decision = per_decision(director, args.decisions)
            extra = step_aside_cost(director, args.decisions)
            decisions.append(decision)
            added.append(extra)
            shares.append(extra / decision)
        rounds = ", ".join(f"{r:.1%}" for r in shares)
        print(f"| {endpoints} | {statistics.median(decisions):.1f} | {statistics.median(added):.1f} | "
              f"{statistics.median(shares):.1%} ({rounds}) |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
