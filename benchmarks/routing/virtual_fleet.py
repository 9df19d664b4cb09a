"""epp's real director and scheduler routing a fleet of simulated engines in virtual time: no sockets, no
Envoy, no sleeping. A workload that takes minutes through the real stack replays in seconds, the same way
every time, so routing policies can be compared over many seeds and fleet shapes; `run.py` then confirms the
chosen one through real Envoy, real gRPC and the HTTP simulators.

What the EPP sees is what it would see for real: the request body (parsed by epp's parser), a scrape of every
engine's waiting/running/KV-usage every --refresh-ms, the first streamed token (director.first_chunk), every
later chunk (director.response_chunk, 16 tokens a chunk) and the final usage (prompt, completion and cached
tokens). What it does not see here: network and processing latency (0 in virtual time) and the scrape's own delay.

    python benchmarks/routing/virtual_fleet.py --workloads high,chat --configs default,recommended --seeds 1,2

A config is a file name of benchmarks/routing/configs/, or a peer policy of virtual_peers.py: `round-robin`,
`random`, `cache-aware` (sglang-router's and vllm-router's cache_aware, from their documented behaviour).

With `--trace DIR` every row also writes DIR/<workload>-<load>-<seed>-<config>.json: per request its server, when
it was sent, admitted by the engine, answered first and finished, what the pick's note predicted and charged,
the engine's queue and KV usage at its arrival, where the engine was in its step (`step_left`, `step_len`,
`since_step`, `since_chunk`), and the TTFT model's coefficients then (what a prediction error comes from;
measurement only, the routing is the same).
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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
from epp.shared.exchange import Exchange  # noqa: E402
from vllmsim.engine import Engine, EngineConfig  # noqa: E402
from vllmsim.server import prompt_text  # noqa: E402

ARRIVAL, STEP, SCRAPE, SLOWDOWN, DELIVER = 0, 1, 2, 3, 4
#: tokens per streamed chunk after the first (run.py's --stream-interval default): each chunk reaches the EPP
#: (director.response_chunk) at the end of the engine step that produced its last token
STREAM_INTERVAL = 16

#: what the predicted-TTFT producer keeps with each pick (its name is the default plugin name)
PREDICTION_NOTE: StateKey[object] = StateKey("predicted-ttft-producer")
#: the TTFT model's coefficients, as --trace names them
COEFFICIENTS = ("base", "per_decode", "per_prefill", "per_request", "per_turnover", "per_step")


@dataclass
class Outcome:
    server: int
    sent: float
    first: float = float("nan")
    done: float = float("nan")
    output_tokens: int = 0
    predicted: float = float("nan")
    #: when the engine first scheduled it (its queue time ends there)
    admitted: float = float("nan")
    #: with --trace: the engine's state at the arrival and the pick's note (what the prediction was built from)
    trace: dict[str, float] | None = None


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


@dataclass(frozen=True)
class Replicas:
    """How many EPP replicas route the workload and what they share.

    `sharing`: each replica's epp.shared Exchange publishes what changed after every pick, first chunk and
    completion, and the peers apply those very records `delay` model seconds later (0: at once); otherwise the
    replicas are independent. `spread`: how arrivals reach the replicas — `alternate` (in turn, as Envoy's
    round robin or least-request over equally busy replicas does) or `random`. Each replica scrapes the engines
    on its own phase of the refresh period."""

    count: int = 1
    sharing: bool = True
    delay: float = 0.0
    spread: str = "alternate"
    #: the streams the delay applies to (the others' records are applied at once): which staleness costs what
    delayed: frozenset[str] = frozenset(("load", "inserts"))

    @property
    def label(self) -> str:
        if self.count == 1:
            return ""
        if not self.sharing:
            return f"+{self.count}i"
        return f"+{self.count}@{self.delay * 1000:g}ms"


@dataclass
class _Replica:
    table: EndpointTable
    director: Director
    #: the scheduler's plugins by name (none for a peer policy)
    plugins: dict[str, object] = field(default_factory=dict)
    exchange: Exchange | None = None


def _replica(config_path: Path, count: int, clock: list[float], index: int, seed: int) -> _Replica:
    table = EndpointTable(max(count, 1))
    for i in range(count):
        table.add(Endpoint(f"127.0.0.{i + 1}", 8000, name=f"server-{i}"))
    if config_path.stem in PEER_POLICIES:
        return _Replica(table, Director(table, PEER_POLICIES[config_path.stem]()))
    scheduler = build_scheduler(load_config_file(str(config_path)), table)
    director = Director(table, scheduler, hooks=scheduler)
    director.clock = lambda: clock[0]
    for producer in scheduler.producers:
        if hasattr(producer, "clock"):
            producer.clock = lambda: clock[0]  # type: ignore[attr-defined]
    for plugin in scheduler.plugins.values():  # ties broken at random, reproducibly, independently per replica
        if isinstance(getattr(plugin, "rng", None), np.random.Generator):
            plugin.rng = np.random.default_rng([seed, index])  # type: ignore[attr-defined]
    return _Replica(table, director, dict(scheduler.plugins))


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
    replicas: Replicas = Replicas(),
    seed: int = 1,
    trace: bool = False,
) -> Result:
    """Route `requests` (sent at `send_times`, model seconds; a request with `after` waits for that one's
    answer) over engines at `speeds`; `slowdown` = (server, at, speed)."""
    count = len(speeds)
    engines = [Engine(EngineConfig(**{**engine_config.__dict__, "speed": s})) for s in speeds]
    clock = [0.0]
    routers = [_replica(config_path, count, clock, r, seed) for r in range(replicas.count)]
    if replicas.count > 1 and replicas.sharing:
        for r, router in enumerate(routers):
            router.exchange = Exchange(router.table, router.plugins, f"replica-{r}", 1 << 20)
    deliveries: list[tuple[int, str, dict[bytes, bytes]]] = []
    spread = random.Random(seed)
    events: list[tuple[float, int, int, int]] = []  # (time, kind, order, payload)
    order = iter(range(1 << 62))
    waiting_on: dict[int, list[int]] = {}
    for i, request in enumerate(requests):
        if request.after is None:
            heapq.heappush(events, (send_times[i], ARRIVAL, next(order), i))
        else:
            waiting_on.setdefault(request.after, []).append(i)
    for r in range(replicas.count):
        heapq.heappush(events, (refresh_s * r / replicas.count, SCRAPE, next(order), r))
    if slowdown is not None:
        heapq.heappush(events, (slowdown[1], SLOWDOWN, next(order), slowdown[0]))
    live: dict[tuple[int, int], tuple[int, int, Decision]] = {}
    admitted: dict[tuple[int, int], float] = {}
    outcomes: dict[int, Outcome] = {}
    busy = [False] * count
    #: per server: when the step in progress ends and how long it is, when the last step ended and the last
    #: response chunk left it (for --trace)
    step_end, step_len, last_end, last_chunk = [0.0] * count, [0.0] * count, [0.0] * count, [0.0] * count
    finished = 0
    arrived = 0
    total = len(requests)

    def kick(server: int) -> None:
        engine = engines[server]
        if busy[server] or not engine.has_work():
            return
        for _ in range(3):  # a step that only preempted runs nothing; the server steps again at once
            duration = engine.step()
            for started in engine.first_scheduled:
                admitted[(server, started.request_id)] = clock[0]
            if duration > 0:
                busy[server] = True
                step_end[server], step_len[server] = clock[0] + duration, duration
                heapq.heappush(events, (clock[0] + duration, STEP, next(order), server))
                return
            engine.finish_step()

    def publish(sender: int) -> None:
        """The sender's changes, to every peer after the delay (none: independent replicas)."""
        exchange = routers[sender].exchange
        if exchange is None:
            return
        for stream, fields in exchange.outgoing(False, clock[0]):
            for peer in range(replicas.count):
                if peer == sender:
                    continue
                if replicas.delay <= 0 or stream not in replicas.delayed:
                    receive(peer, stream, fields)
                else:
                    deliveries.append((peer, stream, fields))
                    heapq.heappush(events, (clock[0] + replicas.delay, DELIVER, next(order), len(deliveries) - 1))

    def receive(peer: int, stream: str, fields: dict[bytes, bytes]) -> None:
        exchange = routers[peer].exchange
        assert exchange is not None
        if stream == "load":
            exchange.apply_load(fields, clock[0], clock[0])
        else:
            exchange.apply_inserts([fields], None)

    while events and finished < total:
        at, kind, _, payload = heapq.heappop(events)
        clock[0] = at
        if kind == ARRIVAL:
            request = requests[payload]
            r = spread.randrange(replicas.count) if replicas.spread == "random" else arrived % replicas.count
            arrived += 1
            director = routers[r].director
            raw = orjson.dumps(request.body)
            parsed = parse_openai_body(raw, request.path)
            decision = director.decide(f"r{payload}", request.headers, parsed, raw, None)
            publish(r)
            server = decision.charged_slot
            model = str(request.body["model"])
            adapter = "" if model == base_model else model
            sequence = engines[server].add(prompt_text(request.body), int(request.body["max_tokens"]), model, adapter)
            live[(server, sequence.request_id)] = (payload, r, decision)
            note = decision.result.recall(PREDICTION_NOTE)
            outcomes[payload] = Outcome(server, at, predicted=getattr(note, "predicted", float("nan")))
            if trace:
                outcomes[payload].trace = _trace_of(engines[server], note, sequence.prompt_tokens)
                if adapter:  # whether the adapter was running there, and whether its slots were all taken
                    active = engines[server].active_adapters()
                    outcomes[payload].trace["adapter_running"] = float(adapter in active)
                    outcomes[payload].trace["adapter_slots_full"] = float(len(active) >= engine_config.max_loras)
                model = getattr(routers[r].plugins.get("predicted-ttft-producer"), "model", None)
                busy_now = busy[server]
                outcomes[payload].trace.update(
                    step_left=step_end[server] - at if busy_now else 0.0,
                    step_len=step_len[server] if busy_now else 0.0,
                    since_step=at - last_end[server],
                    since_chunk=at - last_chunk[server],
                )
                if model is not None:
                    coefficients = dict(zip(COEFFICIENTS, model.coefficients, strict=True))
                    outcomes[payload].trace.update(coefficients, slowness=float(model.slowness[server]))
            kick(server)
        elif kind == STEP:
            server = payload
            busy[server] = False
            produced, done = engines[server].finish_step()
            last_end[server] = at
            for sequence in produced:
                index, r, decision = live[(server, sequence.request_id)]
                outcome = outcomes[index]
                if outcome.output_tokens == 0:
                    outcome.first = last_chunk[server] = at
                    outcome.admitted = admitted.pop((server, sequence.request_id), float("nan"))
                    routers[r].director.first_chunk(decision, streamed=True)
                    publish(r)
                elif (sequence.generated - 1) % STREAM_INTERVAL == 0 or sequence.done:
                    last_chunk[server] = at  # a later chunk, as run.py's servers stream them
                    routers[r].director.response_chunk(decision)
                outcome.output_tokens += 1
            for sequence in done:
                index, r, decision = live.pop((server, sequence.request_id))
                outcomes[index].done = at
                usage = Usage(sequence.prompt_tokens, sequence.generated, 0, sequence.cached, cached_reported=True)
                routers[r].director.run_deferred_hooks(decision)
                routers[r].director.complete(decision, usage)
                publish(r)
                finished += 1
                for follower in waiting_on.pop(index, []):
                    heapq.heappush(events, (at, ARRIVAL, next(order), follower))
            kick(server)
        elif kind == SCRAPE:
            table = routers[payload].table
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
            heapq.heappush(events, (at + refresh_s, SCRAPE, next(order), payload))
        elif kind == DELIVER:
            receive(*deliveries[payload])
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


def _trace_of(engine: Engine, note: object, prompt_tokens: int) -> dict[str, float]:
    """The engine's queue and KV at an arrival (this request already queued) and what the pick's note charged."""
    fields = ("uncached", "queued", "decoding", "waiting", "predicted", "kv_need")
    noted = {name: float(getattr(note, name, float("nan"))) for name in fields}
    ahead = list(engine.waiting)[:-1]
    return {
        **noted,
        "engine_waiting": float(len(ahead)),
        "engine_running": float(len(engine.running)),
        "kv_usage": engine.kv_usage,
        "waiting_tokens": float(sum(s.prompt_tokens - s.computed for s in ahead)),
        "prompt_tokens": float(prompt_tokens),
    }


def _write_trace(path: Path, result: Result) -> None:
    rows = [
        {"server": o.server, "sent": o.sent, "admitted": o.admitted, "first": o.first, "done": o.done}
        | {"output": o.output_tokens}
        | (o.trace or {})
        for o in result.outcomes
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(rows))


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
    parser.add_argument("--share-delays-ms", default="10", help="for NAME+N configs: model ms until a peer applies")
    parser.add_argument("--spread", choices=("alternate", "random"), default="alternate")
    parser.add_argument("--trace", default="", help="a directory: one JSON file of per-request records per row")
    args, rest = parser.parse_known_args()
    delays = [float(x) / 1000 for x in args.share_delays_ms.split(",")]
    configs = [(name, how) for config in args.configs.split(",") for name, how in _replicas_of(config, delays, args)]
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
                for config, replicas in configs:
                    started = time.monotonic()
                    path = HERE / "configs" / f"{config}.yaml"
                    result = simulate(path, workload.requests, sends, workload.speeds, engine_config,
                                      args.refresh_ms / 1000, slow, MODEL, lora, replicas, seed,
                                      bool(args.trace))  # fmt: skip
                    if args.trace:
                        _write_trace(Path(args.trace) / f"{name}-{load:g}-{seed}-{config}{replicas.label}.json", result)
                    share = max(result.per_server) / max(min(result.per_server), 1e-9)
                    err = statistics.median(result.prediction_errors) if result.prediction_errors else float("nan")
                    print(
                        f"| {name} | {load:g} | {seed} | {config}{replicas.label} | {result.ttft(0.5):.3f} | "
                        f"{result.ttft(0.9):.3f} | {result.ttft(0.99):.3f} | {result.output_tokens_per_s:.0f} | "
                        f"{result.hit_rate:.1%} | {share:.2f} | {err:.1%} | {result.per_server} | "
                        f"<!-- {time.monotonic() - started:.0f}s -->",
                        flush=True,
                    )
    return 0


def _replicas_of(config: str, delays: list[float], args: argparse.Namespace) -> list[tuple[str, Replicas]]:
    """`recommended` → one replica; `recommended+2` → two sharing replicas, one row per delay; `recommended+2i`
    → two independent replicas (run.py's names)."""
    name, _, count = config.partition("+")
    if not count:
        return [(name, Replicas())]
    independent = count.endswith("i")
    replicas = int(count.removesuffix("i"))
    if replicas < 1:
        raise SystemExit(f"{config}: replicas must be 1 or more")
    if independent:
        return [(name, Replicas(replicas, sharing=False, spread=args.spread))]
    return [(name, Replicas(replicas, sharing=True, delay=delay, spread=args.spread)) for delay in delays]


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
