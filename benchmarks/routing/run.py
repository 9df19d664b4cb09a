"""Routing quality on a simulated fleet: epp (behind real Envoy) and peer routers over N simulated vLLM servers.

For every seed x workload x load x configuration the fleet is started fresh (cold caches, empty index), then
either epp with a config from configs/ behind Envoy, or a peer router (`vllm-router:cache_aware`,
`sglang-router:round_robin`, ...; see peers.py) that the load generator talks to directly. The workload is
sent open loop (Poisson, or on/off bursts for `bursty`) and the report gives TTFT p50/p90/p99, end-to-end
latency, throughput, the fleet's prefix-cache hit rate (from the servers' own vllm:prefix_cache_* counters),
the per-server spread of requests, failures, epp's TTFT prediction error when it exports one, the offered
and achieved send rates and the CPU each part used. Latencies and rates are in model time (the simulated
A100s' clock: wall clock x --time-scale). Output: markdown tables (one per workload, load, fleet and seed, the
configs side by side, with a verdict line) on stdout; JSON and PNG plots in benchmarks/routing/results/.

The offered rate is a stated multiple (--loads, or --load-NAME per workload) of what the fleet can serve,
estimated in-process from the same engine model before the run (see capacity.py).

`python benchmarks/routing/run.py` (8 workloads x 4 epp configurations at their default loads)
`python benchmarks/routing/run.py --workloads high --configs random,default`
`python benchmarks/routing/run.py --workloads unique,mixed --configs random,default,vllm-router:cache_aware,\
    sglang-router:cache_aware --loads 1.0,2.0 --servers 4 --num-gpu-blocks 4800 --seeds 1,2`
`python benchmarks/routing/run.py --quick --servers 2 --workloads low --configs random,vllm-router:round_robin`

An epp configuration may name replicas: `recommended+2` runs two epp replicas sharing state through a local
redis-server (`--shared-state`), `recommended+2i` two independent ones (each routing on its own state), both
behind one Envoy spreading streams over them (deploy/envoy/envoy-replicas.yaml):
`python benchmarks/routing/run.py --workloads high,chat --configs recommended,recommended+2,recommended+2i`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from capacity import fleet_capacity  # noqa: E402
from fleet import CpuMeter, engine_ttfts, fleet_counters, set_speed, start_fleet  # noqa: E402
from loadgen import Result, on_off_arrivals, poisson_arrivals, run_schedule  # noqa: E402
from peers import PeerRouter, PeerUnavailable, is_peer, parse_spec  # noqa: E402
from promtext import bucket_quantile, family_median, histogram_buckets, scrape  # noqa: E402
from report import HEADER, PREDICTION_ERROR, engine_summary, plot, row, summarise, verdict  # noqa: E402
from workloads import (  # noqa: E402
    Request,
    multi_lora,
    multi_turn_chat,
    shared_prefix,
    shared_system_chat,
    unique_chat,
)

from epp.devstack.envoy import EnvoyProcess, free_port, render_bootstrap  # noqa: E402
from epp.devstack.lifecycle import stop_process  # noqa: E402
from epp.devstack.processes import EppProcess  # noqa: E402
from epp.devstack.redis import RedisServer  # noqa: E402
from vllmsim.engine import EngineConfig  # noqa: E402

RESULTS = HERE / "results"
STOPPING: list[bool] = []
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ADAPTERS = ["sql-lora", "chat-lora", "code-lora"]
WORKLOADS = ("high", "low", "chat", "lora", "unique", "mixed", "bursty", "slowdown")
CONFIGS = ("random", "queue", "default", "prefix-only")
SEED_STRIDE = 1000  # seed s shifts every generator's seed by (s - 1) x this: seed 1 is the original workload
QUICK_REQUESTS = 24


@dataclass
class Workload:
    name: str
    requests: list[Request]
    load: float  # default multiple of capacity when --loads is not given
    speeds: list[float]  # per server, at the start
    bursty: bool = False  # on/off arrivals instead of Poisson
    slowdown: float = 0.0  # when > 0, server 0's speed becomes this at half the schedule
    adapters: list[str] = field(default_factory=list)


def build(name: str, args: argparse.Namespace, seed: int) -> Workload:
    """The workload's requests (generated from `seed`), its default load multiple and its fleet's speeds."""
    shift = (seed - 1) * SEED_STRIDE
    n, out, even = args.servers, args.output_tokens, [1.0] * args.servers
    if name == "high":  # GIE high-cache profile (system 2048, question 256), groups sized to the fleet's KV
        fleet_kv_tokens = n * (args.num_gpu_blocks or EngineConfig().num_gpu_blocks) * EngineConfig().block_size
        groups = args.high_groups or max(1, round(args.prefix_demand * fleet_kv_tokens / 2048))
        requests = shared_prefix(MODEL, groups, args.prompts_per_group, 2048, 256, out, seed=1 + shift)
        return Workload(name, requests, args.load_high, even)
    if name == "low":  # GIE low-cache profile (system 256, question 2048)
        return Workload(name, shared_prefix(MODEL, 64, 16, 256, 2048, out, seed=5 + shift), args.load_low, even)
    if name == "chat":  # production-stack multi-round QA
        requests = multi_turn_chat(MODEL, args.chat_users, args.chat_rounds, 1024, 128, out, seed=2 + shift)
        return Workload(name, requests, args.load_chat, even)
    if name == "lora":  # three adapters at 60/30/10 %, --max-loras slots per server
        requests = multi_lora(ADAPTERS, [0.6, 0.3, 0.1], 1024, 512, out, seed=3 + shift)
        return Workload(name, requests, args.load_lora, even, adapters=ADAPTERS)
    if name == "unique":  # nothing shared but "You are a helpful assistant." and the chat format
        return Workload(name, unique_chat(MODEL, 1024, 1024, out, seed=4 + shift), args.load_unique, even)
    if name == "mixed":  # half the servers at --slow-speed; one application's 1,024-token system prompt
        speeds = [1.0 if i < (n + 1) // 2 else args.slow_speed for i in range(n)]
        requests = shared_system_chat(MODEL, 1024, 1024, 256, out, seed=6 + shift)
        return Workload(name, requests, args.load_mixed, speeds)
    if name == "bursty":  # the low profile's prompts, on/off arrivals with the same mean rate
        requests = shared_prefix(MODEL, 64, 16, 256, 2048, out, seed=5 + shift)
        return Workload(name, requests, args.load_bursty, even, bursty=True)
    if name == "slowdown":  # 32 groups x 32 (system 1,024 + question 256); server 0 slows down half-way
        requests = shared_prefix(MODEL, 32, 32, 1024, 256, out, seed=8 + shift)
        return Workload(name, requests, args.load_slowdown, even, slowdown=args.slowdown_speed)
    raise SystemExit(f"unknown workload {name!r}; use {', '.join(WORKLOADS)}")


def arrivals(workload: Workload, rate: float, args: argparse.Namespace, seed: int) -> list[float]:
    """Wall-clock send times: `rate` is in model requests/s, the burst period in model seconds."""
    scale, count, arrival_seed = args.time_scale, len(workload.requests), 7 + (seed - 1) * SEED_STRIDE
    if workload.bursty:
        return on_off_arrivals(count, rate * scale, args.burst_on / scale, args.burst_off / scale, arrival_seed)
    return poisson_arrivals(count, rate * scale, arrival_seed)


def long_streams(bootstrap: dict[str, Any]) -> dict[str, Any]:
    """Let an overloaded configuration be measured to completion instead of failing in Envoy:
    - deploy/envoy/envoy.yaml gives the ext_proc gRPC stream 10 s; in full-duplex mode that stream lasts as long
      as the whole response, so give it the route's 300 s;
    - Envoy's default circuit breakers allow 1,024 concurrent requests per cluster (then 503 overflow); a
      cache-blind configuration past saturation holds more than that in flight."""
    resources = bootstrap["static_resources"]
    manager = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    for item in manager["http_filters"]:
        if item["name"] == "envoy.filters.http.ext_proc":
            item["typed_config"]["grpc_service"]["timeout"] = "300s"
    limits = {"max_connections": 100_000, "max_pending_requests": 100_000, "max_requests": 100_000}
    for cluster in resources["clusters"]:
        cluster["circuit_breakers"] = {"thresholds": [limits]}
    return bootstrap


@dataclass
class Fleet:
    servers: int
    blocks: int
    speeds: list[float]

    def label(self) -> str:
        speeds = "" if set(self.speeds) == {1.0} else " speeds " + ",".join(f"{v:g}" for v in self.speeds)
        return f"{self.servers}\u00d7{self.blocks} blocks{speeds}"


async def _slow_down_at(at: float, port: int, factor: float, log: list[float]) -> None:
    await asyncio.sleep(at)
    await asyncio.to_thread(set_speed, port, factor)
    log.append(at)


async def _drive(
    url: str, requests: list[Request], schedule: list[float], slowdown: tuple[float, int, float] | None
) -> tuple[list[Result], float, list[float]]:
    """The open-loop run; with `slowdown` (when, port, factor) that server's speed changes at that time."""
    changed: list[float] = []
    task = asyncio.create_task(_slow_down_at(*slowdown, changed)) if slowdown else None
    try:
        results, wall = await run_schedule(url, requests, schedule)
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return results, wall, changed


def run_one(
    workload: Workload, config: str, schedule: list[float], fleet_shape: Fleet, args: argparse.Namespace
) -> dict[str, Any]:
    """One row: a fresh fleet, then epp behind Envoy (an epp config name) or a peer router (name:policy)."""
    scale, servers = args.time_scale, fleet_shape.servers
    fleet, base = start_fleet(
        MODEL, servers, scale, args.stream_interval, workload.adapters, args.max_loras, fleet_shape.speeds,
        args.num_gpu_blocks,
    )  # fmt: skip
    ports = [base + i for i in range(servers)]
    slowdown = (schedule[-1] / 2, ports[0], workload.slowdown) if workload.slowdown else None
    epp: EppProcess | None = None
    epps: list[EppProcess] = []
    store: RedisServer | None = None
    envoy: EnvoyProcess | None = None
    peer: PeerRouter | None = None
    pred_err: float | None = None
    staleness: list[dict[str, float]] = []
    try:
        if is_peer(config):
            peer = PeerRouter(config, [f"http://127.0.0.1:{p}" for p in ports])
            peer.start()
            assert peer.process is not None
            url, roots = peer.url, {"router": peer.process.pid}
        else:
            refresh = f"{max(args.refresh_ms / scale, 5):.0f}ms"  # the reference's 50 ms, in model time
            endpoints = ",".join(f"127.0.0.1:{p}" for p in ports)
            name, count, shared = replicas_of(config)
            epp_args = ["--endpoints", endpoints, "--v", "1", "--tracing=false", "--refresh-metrics-interval",
                        refresh, "--config-file", str(HERE / "configs" / f"{name}.yaml")]  # fmt: skip
            roots = {}
            if count > 1:
                epp_args.append("--health-checking")  # the replicas' Envoy cluster checks each one
            if shared:
                store = RedisServer()
                store.start()
                assert store.process is not None
                epp_args += ["--shared-state", store.url]
                roots["redis"] = store.process.pid
            epps = [EppProcess(epp_args, env={"POD_NAME": f"epp-{i}"}) for i in range(count)]
            for replica in epps:
                replica.start()
            epp = epps[0]
            if count > 1:
                ports_of = [replica.grpc_port for replica in epps]
                bootstrap = render_bootstrap("envoy-replicas", free_port(), free_port(), 0, epp_ports=ports_of)
            else:
                # --envoy-layout reference: one filter, the response crossing epp chunk by chunk
                response_mode = "FULL_DUPLEX_STREAMED" if args.envoy_layout == "reference" else None
                request_mode = "FULL_DUPLEX_STREAMED" if args.envoy_layout == "reference" else None
                bootstrap = render_bootstrap(
                    "envoy", free_port(), free_port(), epp.grpc_port,
                    request_body_mode=request_mode, response_body_mode=response_mode,
                )  # fmt: skip
            envoy = EnvoyProcess(long_streams(bootstrap))
            envoy.start()
            assert envoy.process is not None
            url = f"http://127.0.0.1:{envoy.listener_port}"
            for i, replica in enumerate(epps):
                assert replica.process is not None
                roots["epp" if count == 1 else f"epp{i}"] = replica.process.pid
            roots["envoy"] = envoy.process.pid
        meter = CpuMeter({**roots, "simulators": fleet.pid})
        meter.start()
        own = time.process_time()
        results, wall, changed = asyncio.run(_drive(url, workload.requests, schedule, slowdown))
        cores = meter.stop()
        cores["loadgen"] = (time.process_time() - own) / wall
        summary = summarise(results, wall, scale, fleet_counters(base, servers), ports)
        summary.update(engine_summary(*engine_ttfts(base, servers)))
        if epp is not None:
            pages = [scrape(f"http://127.0.0.1:{replica.metrics_port}/metrics") for replica in epps]
            pred_err = family_median(pages[0], PREDICTION_ERROR)
            staleness = [staleness_p99(page) for page in pages] if store is not None else []
    finally:
        if envoy is not None:
            envoy.stop()
        for replica in epps:
            replica.stop()
        if store is not None:
            store.close()
        if peer is not None:
            peer.stop()
        stop_process(fleet)
    summary.update(workload=workload.name, config=config, cores=cores, pred_err_p50=pred_err)
    if staleness:
        summary["shared_staleness_p99_ms"] = staleness
    if slowdown:
        summary["slowdown"] = {"server": 0, "factor": slowdown[2], "at_model_s": [t * scale for t in changed]}
    return summary


def replicas_of(config: str) -> tuple[str, int, bool]:
    """`recommended` → (recommended, 1, False); `recommended+2` → 2 sharing replicas; `recommended+2i` → 2
    independent ones."""
    name, _, replicas = config.partition("+")
    if not replicas:
        return name, 1, False
    independent = replicas.endswith("i")
    count = int(replicas.removesuffix("i"))
    if count < 1:
        raise SystemExit(f"{config}: replicas must be 1 or more")
    return name, count, count > 1 and not independent


def staleness_p99(page: str) -> dict[str, float]:
    """p50/p90/p99 of epp_shared_state_staleness_seconds per stream (load, inserts), in milliseconds."""
    found: dict[str, float] = {}
    for stream in ("load", "inserts"):
        lines = "\n".join(line for line in page.splitlines() if f'stream="{stream}"' in line)
        buckets = histogram_buckets(lines, "epp_shared_state_staleness_seconds").get(
            "epp_shared_state_staleness_seconds", []
        )
        for q in (0.5, 0.9, 0.99):
            found[f"{stream}_p{round(q * 100)}"] = round(1000 * bucket_quantile(buckets, q), 1)
    return found


def _interrupt(signum: int, frame: object) -> None:
    """Stop after cleaning up: the current run's finally stops its processes, no further run starts."""
    STOPPING.append(True)
    raise KeyboardInterrupt


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--num-gpu-blocks", type=int, default=0, help="KV blocks per server (default: A100's)")
    parser.add_argument("--seeds", default="1", help="comma-separated; each changes prompts and arrival times")
    parser.add_argument("--loads", default="", help="multiples of capacity, e.g. 1.0,2.0 (default: per workload)")
    parser.add_argument("--quick", action="store_true", help=f"only {QUICK_REQUESTS} requests per workload (smoke)")
    parser.add_argument("--time-scale", type=float, default=2.0, help="simulator speed-up over real time")
    parser.add_argument("--stream-interval", type=int, default=16, help="tokens per SSE chunk after the first")
    parser.add_argument(
        "--envoy-layout", choices=("observe", "reference"), default="observe",
        help="one epp: deploy/envoy/envoy.yaml's routing + observing filters, or the reference's full-duplex one",
    )  # fmt: skip
    parser.add_argument("--refresh-ms", type=float, default=50.0, help="epp scrape interval in model time")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help="epp configs (configs/NAME.yaml) and peers: vllm-router:POLICY, sglang-router:POLICY "
        "(POLICY: round_robin, cache_aware, random)",
    )
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--prefix-demand", type=float, default=0.73, help="high: system prompts / fleet KV")
    parser.add_argument("--high-groups", type=int, default=0, help="high: groups (default from --prefix-demand)")
    parser.add_argument("--prompts-per-group", type=int, default=16)
    parser.add_argument("--chat-users", type=int, default=256)
    parser.add_argument("--chat-rounds", type=int, default=4)
    parser.add_argument("--max-loras", type=int, default=2, help="lora: adapter slots per server")
    parser.add_argument("--slow-speed", type=float, default=0.5, help="mixed: speed of the slower half")
    parser.add_argument("--slowdown-speed", type=float, default=0.33, help="slowdown: server 0's speed half-way")
    parser.add_argument("--burst-on", type=float, default=5.0, help="bursty: model seconds on")
    parser.add_argument("--burst-off", type=float, default=10.0, help="bursty: model seconds off")
    for name, load in (("high", 1.5), ("low", 0.8), ("chat", 1.0), ("lora", 0.8), ("unique", 1.0),
                       ("mixed", 1.0), ("bursty", 1.0), ("slowdown", 1.0)):  # fmt: skip
        parser.add_argument(f"--load-{name}", type=float, default=load, help="x the fleet's capacity")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where JSON, markdown and plots go")
    parser.add_argument("--plot-only", type=Path, help="redraw the plots of a saved routing-*.json and exit")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.plot_only:
        stamp = args.plot_only.stem.removeprefix("routing-")
        for path in plot(json.loads(args.plot_only.read_text()), args.results_dir, stamp):
            print(f"plot: {path}")
        return 0
    configs = args.configs.split(",")
    for config in configs:
        if is_peer(config):
            parse_spec(config)  # an unknown peer or policy is an error before anything starts
        elif not (HERE / "configs" / f"{replicas_of(config)[0]}.yaml").is_file():
            raise SystemExit(f"no epp config {config!r} in {HERE / 'configs'} and not a peer (name:policy)")
    seeds = [int(s) for s in args.seeds.split(",")]
    loads = [float(v) for v in args.loads.split(",")] if args.loads else []
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    results_dir: Path = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    started = time.monotonic()
    print(
        f"# routing benchmark — {args.servers} simulated A100-40GB servers (Llama-3.1-8B), time-scale "
        f"{args.time_scale:g}x, {time.strftime('%Y-%m-%d %H:%M')}; latencies and rates in model time\n",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    skipped: dict[str, str] = {}
    for seed in seeds:
        for name in args.workloads.split(","):
            workload = build(name, args, seed)
            if args.quick:
                workload.requests = workload.requests[:QUICK_REQUESTS]  # `after` points backwards: still valid
            engine = EngineConfig(
                max_loras=args.max_loras if workload.adapters else 0,
                num_gpu_blocks=args.num_gpu_blocks or EngineConfig().num_gpu_blocks,
            )
            shape = Fleet(args.servers, engine.num_gpu_blocks, workload.speeds)
            capacity = fleet_capacity(workload.requests, workload.speeds, engine, MODEL)
            for load in loads or [workload.load]:
                rate = load * capacity
                schedule = arrivals(workload, rate, args, seed)
                group = [f"\n### {name} · {load:g}\u00d7 · {shape.label()} · seed {seed}\n",
                         f"<!-- {len(workload.requests)} requests, fleet capacity {capacity:.1f} req/s (in-process), "
                         f"offered {rate:.1f} req/s -->", HEADER]  # fmt: skip
                print("\n".join(group), flush=True)
                lines.extend(group)
                done: list[dict[str, Any]] = []
                for config in configs:
                    if STOPPING:
                        return 130
                    try:
                        result = run_one(workload, config, schedule, shape, args)
                    except PeerUnavailable as exc:
                        skipped[config] = str(exc)
                        print(f"<!-- {config}: skipped, {exc} -->", flush=True)
                        continue
                    result.update(capacity=capacity, load=load, seed=seed, servers=shape.servers,
                                  num_gpu_blocks=shape.blocks, speeds=shape.speeds, fleet=shape.label())  # fmt: skip
                    done.append(result)
                    lines.append(row(result))
                    print(lines[-1], flush=True)
                rows.extend(done)
                lines.append(verdict(done))
                print(lines[-1], flush=True)
    for r in rows:
        r["ttft_all"] = [round(v, 4) for v in r["ttft_all"]]
    (results_dir / f"routing-{stamp}.json").write_text(json.dumps(rows))
    (results_dir / f"routing-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\nCPU (cores) per run: " + "; ".join(
        f"{r['workload']}/{r['config']}: " + " ".join(f"{k} {v:.2f}" for k, v in r["cores"].items()) for r in rows
    ))  # fmt: skip
    print("send lag p99 (ms): " + ", ".join(f"{r['workload']}/{r['config']} {r['send_lag_p99_ms']:.1f}" for r in rows))
    for config, reason in skipped.items():
        print(f"skipped {config}: {reason}")
    print(f"results: {results_dir / f'routing-{stamp}.json'}")
    for path in plot(rows, results_dir, stamp):
        print(f"plot: {path}")
    print(f"wall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
