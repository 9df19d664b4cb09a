"""What keeping replicas apart costs a pick: the built-in default profile's decision with predicted-ttft-scorer's
step-aside on (as with --shared-state and a peer whose picks arrive 20 ms late) and off, interleaved round by
round, for pools of several sizes. Prints µs per decision, medians over the rounds, and the ratio within each
round.

`python benchmarks/shared/step_aside.py [--rounds 5] [--decisions 2000] [--endpoints 8,64,256]`
"""

from __future__ import annotations

import argparse
import statistics
import time

import orjson

from epp.config.schema import default_config
from epp.datastore.table import Endpoint, EndpointTable
from epp.director import Director
from epp.plugins.latency_scorer import PredictedTTFTScorer
from epp.requests.openai import parse_openai_body
from epp.scheduling.framework import build_scheduler


def router(endpoints: int, apart: bool) -> Director:
    table = EndpointTable(endpoints)
    for i in range(endpoints):
        table.add(Endpoint(f"10.{i // 250}.{i % 250}.1", 8000, name=f"server-{i}"))
    scheduler = build_scheduler(default_config(), table)
    scorer = next(p for p in scheduler.plugins.values() if isinstance(p, PredictedTTFTScorer))
    if apart:
        scorer.replica_place = lambda: (1, 2, 0.02)
    return Director(table, scheduler, hooks=scheduler)


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
    print("| endpoints | off µs/decision | step-aside on µs/decision | on / off (rounds) |")
    print("|---:|---:|---:|---|")
    for endpoints in (int(n) for n in args.endpoints.split(",")):
        off, on, ratios = [], [], []
        for _ in range(args.rounds):
            plain = per_decision(router(endpoints, False), args.decisions)
            apart = per_decision(router(endpoints, True), args.decisions)
            off.append(plain)
            on.append(apart)
            ratios.append(apart / plain)
        rounds = ", ".join(f"{r:.3f}" for r in ratios)
        print(f"| {endpoints} | {statistics.median(off):.1f} | {statistics.median(on):.1f} | "
              f"{statistics.median(ratios):.3f} ({rounds}) |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
