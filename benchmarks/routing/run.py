"""Routing quality on a simulated fleet: real Envoy + epp + N simulated vLLM servers, open-loop load.

For every workload x configuration the fleet and epp are started fresh (cold caches, empty index), the
workload is sent as a Poisson stream, and the report gives TTFT p50/p90/p99, end-to-end latency,
throughput, the fleet's prefix-cache hit rate (from the servers' own vllm:prefix_cache_* counters) and
the per-server spread of requests. Output: a markdown table on stdout, JSON and PNG plots in
benchmarks/results/.

`python benchmarks/routing/run.py [--servers 4] [--time-scale 20] [--workloads high,low,chat,lora]
 [--configs random,queue,default,prefix-only] [--rate-high 12] ...`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import Result, run_poisson  # noqa: E402
from workloads import Request, multi_lora, multi_turn_chat, shared_prefix  # noqa: E402

from epp.devstack.envoy import EnvoyProcess, env_without_proxies, free_port, render_bootstrap  # noqa: E402
from epp.devstack.processes import EppProcess  # noqa: E402

RESULTS = HERE.parent / "results"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ADAPTERS = ["sql-lora", "chat-lora", "code-lora"]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def start_fleet(count: int, time_scale: float, lora: bool) -> tuple[subprocess.Popen[bytes], int]:
    base = free_port()
    while any(_port_busy(base + i) for i in range(count)):
        base = free_port()
    command = [
        sys.executable,
        "-m",
        "vllmsim.cli",
        "--model",
        MODEL,
        "--port",
        str(base),
        "--count",
        str(count),
        "--time-scale",
        str(time_scale),
    ]
    if lora:
        command += ["--max-loras", "1", "--lora-modules", *ADAPTERS]
    process = subprocess.Popen(command, env=env_without_proxies(), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    for i in range(count):
        while True:
            try:
                with _OPENER.open(f"http://127.0.0.1:{base + i}/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    process.kill()
                    raise RuntimeError("simulated fleet did not start") from None
                time.sleep(0.1)
    return process, base


def _port_busy(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def fleet_counters(base: int, count: int) -> dict[str, float]:
    """Sum the prefix-cache counters over the fleet (vLLM names)."""
    totals: dict[str, float] = Counter()
    for i in range(count):
        with _OPENER.open(f"http://127.0.0.1:{base + i}/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(("vllm:prefix_cache_queries", "vllm:prefix_cache_hits")):
                    name = line.split("{", 1)[0].split(" ", 1)[0]
                    totals[name.removesuffix("_total")] += float(line.rsplit(" ", 1)[1])
    return dict(totals)


def workload(name: str, args: argparse.Namespace) -> tuple[list[Request], float]:
    if name == "high":
        return shared_prefix(
            MODEL, args.groups, args.prompts_per_group, args.system_tokens, args.question_tokens, args.output_tokens
        ), args.rate_high
    if name == "low":
        return shared_prefix(
            MODEL, args.groups * args.prompts_per_group, 1, 64, args.system_tokens, args.output_tokens, seed=5
        ), args.rate_low
    if name == "chat":
        return multi_turn_chat(
            MODEL, args.chat_users, args.chat_rounds, args.system_tokens // 2, args.question_tokens, args.output_tokens
        ), args.rate_chat
    if name == "lora":
        return multi_lora(
            ADAPTERS,
            [0.6, 0.3, 0.1],
            args.groups * args.prompts_per_group,
            args.question_tokens * 2,
            args.output_tokens,
        ), args.rate_lora
    raise SystemExit(f"unknown workload {name!r}; use high, low, chat, lora")


def percentile(values: list[float], q: float) -> float:
    clean = sorted(v for v in values if not math.isnan(v))
    if not clean:
        return math.nan
    return clean[min(len(clean) - 1, round(q / 100 * (len(clean) - 1)))]


def summarise(results: list[Result], wall: float, counters: dict[str, float], ports: list[int]) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    per_server = Counter(r.served_by for r in ok)
    loads = [per_server.get(str(p), 0) for p in ports]
    queries = counters.get("vllm:prefix_cache_queries", 0.0)
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "ttft_p50": percentile([r.ttft for r in ok], 50),
        "ttft_p90": percentile([r.ttft for r in ok], 90),
        "ttft_p99": percentile([r.ttft for r in ok], 99),
        "e2e_p50": percentile([r.e2e for r in ok], 50),
        "e2e_p90": percentile([r.e2e for r in ok], 90),
        "throughput_rps": len(ok) / wall if wall else 0.0,
        "output_tokens_per_s": sum(r.completion_tokens for r in ok) / wall if wall else 0.0,
        "prefix_hit_rate": counters.get("vllm:prefix_cache_hits", 0.0) / queries if queries else math.nan,
        "per_server": loads,
        "spread": (max(loads) / (sum(loads) / len(loads))) if sum(loads) else math.nan,
    }


def run_one(workload_name: str, config: str, args: argparse.Namespace) -> dict[str, Any]:
    requests, rate = workload(workload_name, args)
    fleet, base = start_fleet(args.servers, args.time_scale, lora=workload_name == "lora")
    ports = [base + i for i in range(args.servers)]
    epp_args = ["--endpoints", ",".join(f"127.0.0.1:{p}" for p in ports), "--v", "1", "--tracing=false"]
    if config != "builtin":
        epp_args += ["--config-file", str(HERE / "configs" / f"{config}.yaml")]
    epp = EppProcess(epp_args)
    envoy: EnvoyProcess | None = None
    try:
        epp.start()
        envoy = EnvoyProcess(render_bootstrap("envoy", free_port(), free_port(), epp.grpc_port))
        envoy.start()
        results, wall = asyncio.run(run_poisson(f"http://127.0.0.1:{envoy.listener_port}", requests, rate))
        summary = summarise(results, wall, fleet_counters(base, args.servers), ports)
    finally:
        if envoy is not None:
            envoy.stop()
        epp.stop()
        fleet.terminate()
        fleet.wait(10)
    summary.update(workload=workload_name, config=config, rate=rate, wall_s=wall)
    summary["ttft_all"] = [r.ttft for r in results if r.ok]
    return summary


def plot(rows: list[dict[str, Any]], stamp: str) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots (pip install matplotlib)", file=sys.stderr)
        return []
    paths = []
    for name in sorted({r["workload"] for r in rows}):
        subset = [r for r in rows if r["workload"] == name]
        figure, (cdf, bars) = plt.subplots(1, 2, figsize=(11, 4))
        for row in subset:
            values = sorted(v for v in row["ttft_all"] if not math.isnan(v))
            if values:
                cdf.plot(values, [i / len(values) for i in range(len(values))], label=row["config"])
        cdf.set_xscale("log")
        cdf.set_xlabel("TTFT (s, wall clock)")
        cdf.set_ylabel("fraction of requests")
        cdf.set_title(f"{name}: TTFT CDF")
        cdf.legend()
        width = 0.8 / max(len(subset), 1)
        for i, row in enumerate(subset):
            loads = row["per_server"]
            bars.bar([j + i * width for j in range(len(loads))], loads, width, label=row["config"])
        bars.set_xlabel("server")
        bars.set_ylabel("requests served")
        bars.set_title(f"{name}: load per server")
        bars.legend()
        figure.tight_layout()
        path = RESULTS / f"routing-{name}-{stamp}.png"
        figure.savefig(path, dpi=90)
        plt.close(figure)
        paths.append(path)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--time-scale", type=float, default=20.0)
    parser.add_argument("--workloads", default="high,low,chat,lora")
    parser.add_argument("--configs", default="random,queue,default,prefix-only")
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--prompts-per-group", type=int, default=16)
    parser.add_argument("--system-tokens", type=int, default=2048)
    parser.add_argument("--question-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--chat-users", type=int, default=32)
    parser.add_argument("--chat-rounds", type=int, default=6)
    parser.add_argument("--rate-high", type=float, default=40.0)
    parser.add_argument("--rate-low", type=float, default=40.0)
    parser.add_argument("--rate-chat", type=float, default=30.0)
    parser.add_argument("--rate-lora", type=float, default=20.0)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    print(
        f"# routing benchmark — {args.servers} simulated servers, time-scale {args.time_scale}x, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    print(
        "| workload | config | rate/s | ok | TTFT p50 | TTFT p90 | TTFT p99 | e2e p50 | req/s | tok/s | "
        "prefix hit | max/mean load | per server |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in args.workloads.split(","):
        for config in args.configs.split(","):
            row = run_one(name, config, args)
            rows.append(row)
            print(
                f"| {name} | {config} | {row['rate']:g} | {row['requests'] - row['errors']}/{row['requests']} | "
                f"{row['ttft_p50'] * 1e3:.0f} ms | {row['ttft_p90'] * 1e3:.0f} ms | {row['ttft_p99'] * 1e3:.0f} ms | "
                f"{row['e2e_p50'] * 1e3:.0f} ms | {row['throughput_rps']:.1f} | {row['output_tokens_per_s']:.0f} | "
                f"{row['prefix_hit_rate']:.1%} | {row['spread']:.2f} | {row['per_server']} |",
                flush=True,
            )
    (RESULTS / f"routing-{stamp}.json").write_text(
        json.dumps([{k: v for k, v in r.items() if k != "ttft_all"} for r in rows], indent=1)
    )
    for path in plot(rows, stamp):
        print(f"plot: {path}")
    by_key = {(r["workload"], r["config"]): r for r in rows}
    high_random, high_default = by_key.get(("high", "random")), by_key.get(("high", "default"))
    if high_random and high_default:
        print(
            f"\nhigh sharing: TTFT p90 random/default = {high_random['ttft_p90'] / high_default['ttft_p90']:.2f}x, "
            f"throughput default/random = "
            f"{high_default['output_tokens_per_s'] / max(high_random['output_tokens_per_s'], 1e-9):.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
