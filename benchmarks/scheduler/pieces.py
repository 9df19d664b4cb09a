"""Where a decision's time goes: each data producer, each scorer, the picker, the hooks right after the pick, and
the framework around them, for the built-in default profile (or --config FILE) at one size.

    python benchmarks/scheduler/pieces.py [--config FILE] [--endpoints 100] [--prompt 8000] [--picks 4000]

The table, load and warmed prefix index are `run.py`'s (`chat` shape: a warm system prompt and a fresh tail). Picks
alternate: one whole `schedule` (timed as run.py times it), then the next request's pieces one by one on a cycle
state of their own (each timed alone); both are followed by the pre-request hooks, as after a response. The
framework's share is the whole pick's median less the pieces' medians. Then, counted with cProfile (the same on
any machine): the Python function calls per decision and the calls of C functions and methods (cProfile does not
see numpy's ufuncs and operators, so those are not among them).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import timed_requests, warmed

from epp.config.schema import EndpointPickerConfig, load_config_file
from epp.datastore.table import EndpointTable, SlotArray
from epp.scheduling.framework import SchedulerRuntime
from epp.scheduling.types import CycleState, LLMRequest, ProfileResult, SchedulingResult


def pieces_of(scheduler: SchedulerRuntime) -> list[str]:
    profile = scheduler.profile
    if profile is None:
        raise SystemExit("pieces.py times a single-profile config; this one has a profile handler")
    names = [f"producer {p.type_name}" for p in scheduler.producers]
    names += [f"scorer {s.type_name}" for s, *_ in profile.scorers]
    return [*names, f"picker {profile.picker.type_name}", "hooks after the pick"]


def one_by_one(
    scheduler: SchedulerRuntime, request: LLMRequest, table: EndpointTable, candidates: SlotArray
) -> tuple[list[float], SchedulingResult]:
    """Each piece of one decision, timed alone (seconds, in pieces_of's order), and the result."""
    profile = scheduler.profile
    assert profile is not None
    clock = time.perf_counter
    state = CycleState(request, table)
    spent = []
    for producer in scheduler.producers:
        started = clock()
        producer.produce(state, candidates)
        spent.append(clock() - started)
    total = None
    for scorer, weight, *_ in profile.scorers:
        started = clock()
        scores = scorer.score(state, candidates)
        spent.append(clock() - started)
        total = scores * weight if total is None else total + scores * weight
    assert total is not None, "a profile without scorers has nothing to take apart"
    started = clock()
    picked = profile.picker.pick(state, candidates, total)
    spent.append(clock() - started)
    result = SchedulingResult({profile.name: ProfileResult(picked)}, profile.name)
    started = clock()
    for hook in scheduler._picked:
        hook(state, result)
    spent.append(clock() - started)
    result.cycle_state = state
    return spent, result


def calls_per_decision(
    scheduler: SchedulerRuntime, requests: list[LLMRequest], table: EndpointTable, candidates: SlotArray
) -> tuple[float, float]:
    """(Python function calls, C function and method calls) per decision, counted by cProfile."""
    profiler = cProfile.Profile()
    for request in requests:
        profiler.enable()
        result = scheduler.schedule(request, table, candidates)
        profiler.disable()
        scheduler.pre_request(request, result, table)
    python = native = 0
    for (filename, _, _), (_, calls, *_) in pstats.Stats(profiler).stats.items():  # type: ignore[attr-defined]
        if filename == "~":
            native += calls
        else:
            python += calls
    return python / len(requests), native / len(requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="an EndpointPickerConfig file instead of the built-in default")
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--prompt", type=int, default=8000, help="prompt characters")
    parser.add_argument("--picks", type=int, default=4000)
    args = parser.parse_args()
    config: EndpointPickerConfig | None = load_config_file(args.config) if args.config else None
    table, scheduler, shared = warmed(args.endpoints, args.prompt, 1, "chat", config)
    candidates = table.live_slots()
    names = pieces_of(scheduler)
    alone: list[list[float]] = [[] for _ in names]
    whole: list[float] = []
    requests = list(timed_requests(shared, args.prompt, args.picks + 400))
    for i, request in enumerate(requests[: args.picks]):
        if i % 2 == 0:
            started = time.perf_counter()
            result = scheduler.schedule(request, table, candidates)
            whole.append(time.perf_counter() - started)
        else:
            spent, result = one_by_one(scheduler, request, table, candidates)
            for column, seconds in zip(alone, spent, strict=True):
                column.append(seconds)
        scheduler.pre_request(request, result, table)
    print(f"config: {args.config or 'built-in default'}, {args.endpoints} endpoints, {args.prompt}-char chat prompt")
    medians = [statistics.median(column) * 1e6 for column in alone]
    for name, median in zip(names, medians, strict=True):
        print(f"  {name:48s} {median:8.1f} µs")
    print(f"  {'framework (whole less the pieces)':48s} {statistics.median(whole) * 1e6 - sum(medians):8.1f} µs")
    print(f"  {'whole decision (p50)':48s} {statistics.median(whole) * 1e6:8.1f} µs")
    python, native = calls_per_decision(scheduler, requests[args.picks :], table, candidates)
    print(f"  calls per decision: {python:.1f} of Python functions, {native:.1f} of C functions and methods")


if __name__ == "__main__":
    main()
