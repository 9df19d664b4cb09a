"""epp's real director and scheduler routing a fleet of simulated engines in virtual time: no sockets, no
Envoy, no sleeping. A workload that takes minutes through the real stack replays in seconds, the same way
every time, so routing policies can be compared over many seeds and fleet shapes; `run.py` then confirms the
chosen one through real Envoy, real gRPC and the HTTP simulators.

What the EPP sees is what it would see for real: the request body (parsed by epp's parser), a scrape of every
engine's waiting/running/KV-usage every --refresh-ms, the first streamed token (director.first_chunk) and
the final usage (prompt, completion and cached tokens). What it does not see here: network and processing
latency (0 in virtual time) and the scrape's own delay.

    python benchmarks/routing/virtual_fleet.py --workloads high,chat --configs default,recommended --seeds 1,2

A config is a file name of benchmarks/routing/configs/, or a peer policy of virtual_peers.py: `round-robin`,
`random`, `cache-aware` (sglang-router's and vllm-router's cache_aware, from their documented behaviour).
"""

from __future__ import annotations

import argparse
import heapq
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from virtual_peers import PEER_POLICIES  # noqa: E402
from workloads import Request  # noqa: E402

from epp.config.schema import load_config_file  # noqa: E402
from epp.datastore.table import Endpoint, EndpointTable  # noqa: E402
from epp.director import Decision, Director  # noqa: E402
from epp.requests.openai import parse_openai_body  # noqa: E402
from epp.scheduling.framework import build_scheduler  # noqa: E402
from epp.scheduling.types import StateKey, Usage  # noqa: E402
from vllmsim.engine import Engine, EngineConfig, Sequence  # noqa: E402
from vllmsim.server import prompt_text  # noqa: E402

ARRIVAL, STEP, SCRAPE, SLOWDOWN = 0, 1, 2, 3

#: what the predicted-TTFT producer keeps with each pick (its name is the default plugin name)
PREDICTION_NOTE: StateKey[object] = StateKey("predicted-ttft-producer")


@dataclass
class Outcome:
    server: int
    sent: float
    first: float = float("nan")
    done: float = float("nan")
    output_tokens: int = 0
    predicted: float = float("nan")


@dataclass
class Result:
    outcomes: list[Outcome]
    duration: float
    per_server: list[int]
    hit_rate: float
    prediction_errors: list[float] = field(default_factory=list)

    def ttft(self, q: float) -> float:
        values = sorted(o.first - o.sent for o in self.outcomes)
        return values[min(int(q * len(values)), len(values) - 1)]

    @property
    def output_tokens_per_s(self) -> float:
        return sum(o.output_tokens for o in self.outcomes) / self.duration


def simulate(
    config_path: Path,
    requests: list[Request],
    send_times: list[float],
    speeds: list[float],
    engine_config: EngineConfig,
    refresh_s: float = 0.05,
    slowdown: tuple[int, float, float] | None = None,
    base_model: str = "",
    lora: bool = False,
) -> Result:
    """Route `requests` (sent at `send_times`, model seconds; a request with `after` waits for that one's
    answer) over engines at `speeds`; `slowdown` = (server, at, speed)."""
    count = len(speeds)
    engines = [Engine(EngineConfig(**{**engine_config.__dict__, "speed": s})) for s in speeds]
    table = EndpointTable(max(count, 1))
    for i in range(count):
        table.add(Endpoint(f"127.0.0.{i + 1}", 8000, name=f"server-{i}"))
    if config_path.stem in PEER_POLICIES:
        director = Director(table, PEER_POLICIES[config_path.stem]())
        scheduler = None
    else:
        scheduler = build_scheduler(load_config_file(str(config_path)), table)
        director = Director(table, scheduler, hooks=scheduler)
    clock = [0.0]
    director.clock = lambda: clock[0]
    for producer in scheduler.producers if scheduler is not None else []:
        if hasattr(producer, "clock"):
            producer.clock = lambda: clock[0]  # type: ignore[attr-defined]
    events: list[tuple[float, int, int, int]] = []  # (time, kind, order, payload)
    order = iter(range(1 << 62))
    waiting_on: dict[int, list[int]] = {}
    for i, request in enumerate(requests):
        if request.after is None:
            heapq.heappush(events, (send_times[i], ARRIVAL, next(order), i))
        else:
            waiting_on.setdefault(request.after, []).append(i)
    heapq.heappush(events, (0.0, SCRAPE, next(order), 0))
    if slowdown is not None:
        heapq.heappush(events, (slowdown[1], SLOWDOWN, next(order), slowdown[0]))
    live: dict[tuple[int, int], tuple[int, Decision, Sequence]] = {}
    outcomes: dict[int, Outcome] = {}
    busy = [False] * count
    finished = 0
    total = len(requests)

    def kick(server: int) -> None:
        engine = engines[server]
        if busy[server] or not engine.has_work():
            return
        for _ in range(3):  # a step that only preempted runs nothing; the server steps again at once
            duration = engine.step()
            if duration > 0:
                busy[server] = True
                heapq.heappush(events, (clock[0] + duration, STEP, next(order), server))
                return
            engine.finish_step()

    while events and finished < total:
        at, kind, _, payload = heapq.heappop(events)
        clock[0] = at
        if kind == ARRIVAL:
            request = requests[payload]
            raw = orjson.dumps(request.body)
            parsed = parse_openai_body(raw, request.path)
            decision = director.decide(f"r{payload}", request.headers, parsed, raw, None)
            server = decision.charged_slot
            model = str(request.body["model"])
            adapter = "" if model == base_model else model
            sequence = engines[server].add(prompt_text(request.body), int(request.body["max_tokens"]), model, adapter)
            live[(server, sequence.request_id)] = (payload, decision, sequence)
            note = decision.result.recall(PREDICTION_NOTE)
            outcomes[payload] = Outcome(server, at, predicted=getattr(note, "predicted", float("nan")))
            kick(server)
        elif kind == STEP:
            server = payload
            busy[server] = False
            produced, done = engines[server].finish_step()
            for sequence in produced:
                index, decision, _ = live[(server, sequence.request_id)]
                outcome = outcomes[index]
                if outcome.output_tokens == 0:
                    outcome.first = at
                    director.first_chunk(decision, streamed=True)
                outcome.output_tokens += 1
            for sequence in done:
                index, decision, _ = live.pop((server, sequence.request_id))
                outcomes[index].done = at
                usage = Usage(sequence.prompt_tokens, sequence.generated, 0, sequence.cached, cached_reported=True)
                director.run_deferred_hooks(decision)
                director.complete(decision, usage)
                finished += 1
                for follower in waiting_on.pop(index, []):
                    heapq.heappush(events, (at, ARRIVAL, next(order), follower))
            kick(server)
        elif kind == SCRAPE:
            for server, engine in enumerate(engines):
                table.waiting_queue[server] = len(engine.waiting)
                table.running_requests[server] = len(engine.running)
                table.kv_usage[server] = engine.kv_usage
                table.cache_block_size[server] = engine.config.block_size
                table.cache_num_blocks[server] = engine.config.num_gpu_blocks
                table.metrics_time[server] = at + 1.0
                table.scrape_inflight_requests[server] = table.inflight_requests[server]
                table.scrape_inflight_prompt_tokens[server] = table.inflight_prompt_tokens[server]
                if lora:
                    active, waiting = engine.active_adapters(), engine.waiting_adapters()
                    table.set_lora(server, frozenset(active), frozenset(waiting), float(engine.config.max_loras))
            heapq.heappush(events, (at + refresh_s, SCRAPE, next(order), 0))
        else:
            engines[payload].set_speed(slowdown[2] if slowdown else 1.0)
    queries = sum(e.prefix_queries for e in engines)
    hits = sum(e.prefix_hits for e in engines)
    done_outcomes = [outcomes[i] for i in sorted(outcomes)]
    errors = [
        abs(o.predicted - (o.first - o.sent)) / (o.first - o.sent)
        for o in done_outcomes
        if o.predicted == o.predicted and o.first > o.sent
    ]
    per_server = [sum(o.server == s for o in done_outcomes) for s in range(count)]
    return Result(done_outcomes, clock[0], per_server, hits / queries if queries else 0.0, errors)


def main() -> int:
    from capacity import fleet_capacity
    from run import MODEL, WORKLOADS, arrivals, build  # the real benchmark's workloads and arrivals

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--configs", default="default,recommended")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--loads", default="", help="multiples of capacity (default: each workload's own)")
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--num-gpu-blocks", type=int, default=0)
    parser.add_argument("--refresh-ms", type=float, default=50.0)
    args, rest = parser.parse_known_args()
    bench = _bench_args(args, rest)
    print("| workload | load | seed | config | TTFT p50 | TTFT p90 | TTFT p99 | out tok/s | hit | share max/min | "
          "pred err p50 | per server |")  # fmt: skip
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in args.workloads.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            workload = build(name, bench, seed)
            lora = workload.adapters is not None and len(workload.adapters) > 0
            engine_config = EngineConfig(max_loras=bench.max_loras) if lora else EngineConfig()
            if args.num_gpu_blocks:
                engine_config = EngineConfig(**{**engine_config.__dict__, "num_gpu_blocks": args.num_gpu_blocks})
            capacity = fleet_capacity(workload.requests, workload.speeds, engine_config, MODEL)
            for load in [float(x) for x in args.loads.split(",")] if args.loads else [workload.load]:
                rate = load * capacity
                sends = [t * bench.time_scale for t in arrivals(workload, rate, bench, seed)]
                slow = None
                if workload.slowdown:
                    slow = (0, sends[len(sends) // 2], workload.slowdown)
                for config in args.configs.split(","):
                    started = time.monotonic()
                    result = simulate(HERE / "configs" / f"{config}.yaml", workload.requests, sends, workload.speeds,
                                      engine_config, args.refresh_ms / 1000, slow, MODEL, lora)  # fmt: skip
                    share = max(result.per_server) / max(min(result.per_server), 1e-9)
                    err = statistics.median(result.prediction_errors) if result.prediction_errors else float("nan")
                    print(
                        f"| {name} | {load:g} | {seed} | {config} | {result.ttft(0.5):.3f} | {result.ttft(0.9):.3f} | "
                        f"{result.ttft(0.99):.3f} | {result.output_tokens_per_s:.0f} | {result.hit_rate:.1%} | "
                        f"{share:.2f} | {err:.1%} | {result.per_server} | <!-- {time.monotonic() - started:.0f}s -->",
                        flush=True,
                    )
    return 0


def _bench_args(args: argparse.Namespace, rest: list[str]) -> argparse.Namespace:
    """run.py's own defaults for everything that shapes a workload (prompts, loads, speeds)."""
    import run

    saved = sys.argv
    try:
        sys.argv = ["run.py", "--servers", str(args.servers), *rest]
        if args.num_gpu_blocks:
            sys.argv += ["--num-gpu-blocks", str(args.num_gpu_blocks)]
        return run.parse_args()  # type: ignore[no-any-return]
    finally:
        sys.argv = saved


if __name__ == "__main__":
    raise SystemExit(main())
