"""Routing quality on a simulated fleet: real Envoy + epp + N simulated vLLM servers, open-loop load.

For every workload x configuration the fleet and epp are started fresh (cold caches, empty index), the
workload is sent as a Poisson stream, and the report gives TTFT p50/p90/p99, end-to-end latency,
throughput, the fleet's prefix-cache hit rate (from the servers' own vllm:prefix_cache_* counters), the
per-server spread of requests, the offered and achieved send rates and the CPU each part used. Latencies and
rates are in model time (the simulated A100s' clock: wall clock x --time-scale). Output: a markdown table
on stdout, JSON and PNG plots in benchmarks/routing/results/.

The offered rate of each workload is a stated multiple (--load-*) of what a cache-blind fleet can serve,
estimated in-process from the same engine model before the run (see capacity.py).

`python benchmarks/routing/run.py` (all four workloads x four configurations, ~12 minutes on 2 cores)
`python benchmarks/routing/run.py --workloads high --configs random,default`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from capacity import random_fleet_capacity  # noqa: E402
from fleet import CpuMeter, fleet_counters, start_fleet  # noqa: E402
from loadgen import run_poisson  # noqa: E402
from report import HEADER, plot, row, summarise  # noqa: E402
from workloads import Request, multi_lora, multi_turn_chat, shared_prefix  # noqa: E402

from epp.devstack.envoy import EnvoyProcess, free_port, render_bootstrap  # noqa: E402
from epp.devstack.lifecycle import stop_process  # noqa: E402
from epp.devstack.processes import EppProcess  # noqa: E402
from vllmsim.engine import EngineConfig  # noqa: E402

RESULTS = HERE / "results"
STOPPING: list[bool] = []
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ADAPTERS = ["sql-lora", "chat-lora", "code-lora"]
WORKLOADS = ("high", "low", "chat", "lora")
CONFIGS = ("random", "queue", "default", "prefix-only")


def build(name: str, args: argparse.Namespace) -> tuple[list[Request], float]:
    """The workload's requests and its load multiple."""
    if name == "high":  # GIE high-cache profile (system 2048, question 256), groups sized to the fleet's KV
        fleet_kv_tokens = args.servers * EngineConfig().num_gpu_blocks * EngineConfig().block_size
        groups = args.high_groups or round(args.prefix_demand * fleet_kv_tokens / 2048)
        return shared_prefix(MODEL, groups, args.prompts_per_group, 2048, 256, args.output_tokens), args.load_high
    if name == "low":  # GIE low-cache profile (system 256, question 2048)
        return shared_prefix(MODEL, 64, 16, 256, 2048, args.output_tokens, seed=5), args.load_low
    if name == "chat":  # production-stack multi-round QA
        return multi_turn_chat(MODEL, args.chat_users, args.chat_rounds, 1024, 128, args.output_tokens), args.load_chat
    if name == "lora":  # three adapters at 60/30/10 %, --max-loras slots per server
        return multi_lora(ADAPTERS, [0.6, 0.3, 0.1], 1024, 512, args.output_tokens), args.load_lora
    raise SystemExit(f"unknown workload {name!r}; use {', '.join(WORKLOADS)}")


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


def run_one(name: str, config: str, requests: list[Request], rate: float, args: argparse.Namespace) -> dict[str, Any]:
    scale = args.time_scale
    adapters = ADAPTERS if name == "lora" else []
    fleet, base = start_fleet(MODEL, args.servers, scale, args.stream_interval, adapters, args.max_loras)
    ports = [base + i for i in range(args.servers)]
    refresh = f"{max(args.refresh_ms / scale, 5):.0f}ms"  # the reference's 50 ms, in model time
    endpoints = ",".join(f"127.0.0.1:{p}" for p in ports)
    epp_args = ["--endpoints", endpoints, "--v", "1", "--tracing=false", "--refresh-metrics-interval", refresh,
                "--config-file", str(HERE / "configs" / f"{config}.yaml")]  # fmt: skip
    epp = EppProcess(epp_args)
    envoy: EnvoyProcess | None = None
    try:
        epp.start()
        envoy = EnvoyProcess(long_streams(render_bootstrap("envoy", free_port(), free_port(), epp.grpc_port)))
        envoy.start()
        assert epp.process is not None and envoy.process is not None
        meter = CpuMeter({"epp": epp.process.pid, "envoy": envoy.process.pid, "simulators": fleet.pid})
        meter.start()
        own = time.process_time()
        results, wall = asyncio.run(run_poisson(f"http://127.0.0.1:{envoy.listener_port}", requests, rate * scale))
        cores = meter.stop()
        cores["loadgen"] = (time.process_time() - own) / wall
        summary = summarise(results, wall, scale, fleet_counters(base, args.servers), ports)
    finally:
        if envoy is not None:
            envoy.stop()
        epp.stop()
        stop_process(fleet)
    summary.update(workload=name, config=config, cores=cores)
    return summary


def _interrupt(signum: int, frame: object) -> None:
    """Stop after cleaning up: the current run's finally stops its processes, no further run starts."""
    STOPPING.append(True)
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--time-scale", type=float, default=2.0, help="simulator speed-up over real time")
    parser.add_argument("--stream-interval", type=int, default=16, help="tokens per SSE chunk after the first")
    parser.add_argument("--refresh-ms", type=float, default=50.0, help="epp scrape interval in model time")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--prefix-demand", type=float, default=0.73, help="high: system prompts / fleet KV")
    parser.add_argument("--high-groups", type=int, default=0, help="high: groups (default from --prefix-demand)")
    parser.add_argument("--prompts-per-group", type=int, default=16)
    parser.add_argument("--chat-users", type=int, default=256)
    parser.add_argument("--chat-rounds", type=int, default=4)
    parser.add_argument("--max-loras", type=int, default=2, help="lora: adapter slots per server")
    parser.add_argument("--load-high", type=float, default=1.5, help="x the random fleet's capacity")
    parser.add_argument("--load-low", type=float, default=0.8)
    parser.add_argument("--load-chat", type=float, default=1.0)
    parser.add_argument("--load-lora", type=float, default=0.8)
    parser.add_argument("--plot-only", type=Path, help="redraw the plots of a saved routing-*.json and exit")
    args = parser.parse_args()
    if args.plot_only:
        stamp = args.plot_only.stem.removeprefix("routing-")
        for path in plot(json.loads(args.plot_only.read_text()), RESULTS, stamp):
            print(f"plot: {path}")
        return 0
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    started = time.monotonic()
    print(
        f"# routing benchmark — {args.servers} simulated A100-40GB servers (Llama-3.1-8B), time-scale "
        f"{args.time_scale:g}x, {time.strftime('%Y-%m-%d %H:%M')}; latencies and rates in model time\n"
    )
    rows = []
    lines = [HEADER]
    print(HEADER, flush=True)
    for name in args.workloads.split(","):
        requests, load = build(name, args)
        lora = EngineConfig(max_loras=args.max_loras) if name == "lora" else EngineConfig()
        capacity = random_fleet_capacity(requests, args.servers, lora, MODEL)
        rate = load * capacity
        print(
            f"<!-- {name}: {len(requests)} requests, random-fleet capacity {capacity:.1f} req/s (in-process), "
            f"offered {load:g}x = {rate:.1f} req/s -->",
            flush=True,
        )
        for config in args.configs.split(","):
            if STOPPING:
                return 130
            result = run_one(name, config, requests, rate, args)
            result.update(capacity=capacity, load=load)
            rows.append(result)
            lines.append(row(result))
            print(lines[-1], flush=True)
    for r in rows:
        r["ttft_all"] = [round(v, 4) for v in r["ttft_all"]]
    (RESULTS / f"routing-{stamp}.json").write_text(json.dumps(rows))
    (RESULTS / f"routing-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\nCPU (cores) per run: " + "; ".join(
        f"{r['workload']}/{r['config']}: " + " ".join(f"{k} {v:.2f}" for k, v in r["cores"].items()) for r in rows
    ))  # fmt: skip
    print("send lag p99 (ms): " + ", ".join(f"{r['workload']}/{r['config']} {r['send_lag_p99_ms']:.1f}" for r in rows))
    for path in plot(rows, RESULTS, stamp):
        print(f"plot: {path.relative_to(HERE.parent.parent)}")
    by_key = {(r["workload"], r["config"]): r for r in rows}
    for workload in ("high", "low"):
        base, best = by_key.get((workload, "random")), by_key.get((workload, "default"))
        if base and best:
            print(
                f"{workload}: default vs random — TTFT p50 {best['ttft_p50'] / base['ttft_p50']:.2f}x, "
                f"p90 {base['ttft_p90'] / best['ttft_p90']:.2f}x better, "
                f"p99 {best['ttft_p99'] / base['ttft_p99']:.2f}x, "
                f"throughput {best['output_tokens_per_s'] / max(base['output_tokens_per_s'], 1e-9):.2f}x"
            )
    print(f"wall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
