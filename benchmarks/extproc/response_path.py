"""What a streamed response costs epp in each Envoy layout: the reference's one full-duplex filter (every chunk
crosses epp and comes back) against deploy/envoy/envoy.yaml's routing + observing filters (epp is sent the
response and answers nothing).

    python benchmarks/extproc/response_path.py [--rounds 3] [--requests 300] [--concurrency 16 | --rate 80]
        [--output-tokens 128] [--stream-interval 1]

One simulated vLLM server (time-scale 20, so the engine is never the bottleneck), epp with its built-in default,
Envoy with one worker. Each round runs both layouts in turn on the same requests. A closed loop (--concurrency)
measures what each layout can carry; at a fixed offered rate (--rate, open loop) the engine sees the same load in
both, so TTFT compares the paths alone. Per layout and round: epp's CPU
per request (from /proc: the whole process, gRPC included), the requests per second the client saw, TTFT and
total time p50 / p90 at the client. The medians over the rounds and the per-round ratios are printed last.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "routing"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fleet import CpuMeter, start_fleet

from epp.devstack.envoy import EnvoyProcess, free_port, render_bootstrap
from epp.devstack.lifecycle import stop_process
from epp.devstack.processes import EppProcess

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
LAYOUTS = {"reference": "FULL_DUPLEX_STREAMED", "observe": None}


async def drive(
    url: str, requests: int, concurrency: int, output_tokens: int, rate: float = 0.0
) -> tuple[list[float], list[float]]:
    """(TTFT, total) seconds of each request; every one must answer 200. `rate` > 0: open loop, Poisson arrivals
    at that rate (seeded, the same in every run), `concurrency` then unbounded."""
    gate = asyncio.Semaphore(concurrency if rate <= 0 else requests)
    gaps = random.Random(7)
    starts = list(itertools.accumulate(gaps.expovariate(rate) for _ in range(requests))) if rate > 0 else []
    ttfts: list[float] = []
    totals: list[float] = []
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(index: int) -> None:
            if starts:
                await asyncio.sleep(max(0.0, began + starts[index] - time.perf_counter()))
            body = {"model": MODEL, "prompt": f"request {index} " * 40, "max_tokens": output_tokens, "stream": True}
            async with gate:
                started = time.perf_counter()
                async with session.post(url, json=body) as response:
                    first = None
                    async for _ in response.content.iter_any():
                        if first is None:
                            first = time.perf_counter() - started
                    if response.status != 200:
                        raise RuntimeError(f"request {index}: HTTP {response.status}")
                ttfts.append(first if first is not None else float("nan"))
                totals.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
    return ttfts, totals


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def run_layout(layout: str, sim_port: int, args: argparse.Namespace) -> dict[str, float]:
    epp = EppProcess(["--endpoints", f"127.0.0.1:{sim_port}", "--refresh-metrics-interval", "50ms"])
    epp.start()
    try:
        mode = LAYOUTS[layout]
        config = render_bootstrap(
            "envoy", free_port(), free_port(), epp.grpc_port, request_body_mode=mode, response_body_mode=mode
        )
        with EnvoyProcess(config) as envoy:
            url = f"http://127.0.0.1:{envoy.listener_port}/v1/completions"
            asyncio.run(drive(url, 20, 4, args.output_tokens))  # warm up
            assert epp.process is not None
            meter = CpuMeter({"epp": epp.process.pid})
            meter.start()
            started = time.monotonic()
            ttfts, totals = asyncio.run(drive(url, args.requests, args.concurrency, args.output_tokens, args.rate))
            wall = time.monotonic() - started
            cores = meter.stop()["epp"]
    finally:
        epp.stop()
    return {
        "cpu_ms": cores * wall / args.requests * 1000,
        "rps": args.requests / wall,
        "ttft_p50": quantile(ttfts, 0.5) * 1000,
        "ttft_p90": quantile(ttfts, 0.9) * 1000,
        "total_p50": quantile(totals, 0.5) * 1000,
        "total_p90": quantile(totals, 0.9) * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16, help="closed loop: requests kept in flight")
    parser.add_argument("--rate", type=float, default=0.0, help="open loop instead: Poisson arrivals per second")
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--stream-interval", type=int, default=1, help="tokens per SSE chunk after the first")
    args = parser.parse_args()
    fleet, port = start_fleet(MODEL, 1, 20.0, args.stream_interval, [])
    rows: dict[str, list[dict[str, float]]] = {layout: [] for layout in LAYOUTS}
    try:
        for round_index in range(args.rounds):
            for layout in LAYOUTS:
                row = run_layout(layout, port, args)
                rows[layout].append(row)
                print(
                    f"round {round_index + 1} {layout:9s} epp CPU {row['cpu_ms']:6.2f} ms/request  "
                    f"{row['rps']:6.1f} req/s  TTFT p50 {row['ttft_p50']:6.1f} p90 {row['ttft_p90']:6.1f} ms  "
                    f"total p50 {row['total_p50']:6.1f} p90 {row['total_p90']:6.1f} ms",
                    flush=True,
                )
    finally:
        stop_process(fleet)
    offered = f"{args.rate:g} requests/s offered" if args.rate > 0 else f"concurrency {args.concurrency}"
    print(f"\nmedians over {args.rounds} rounds ({args.requests} requests, {offered}, "
          f"{args.output_tokens} tokens, stream interval {args.stream_interval}):")  # fmt: skip
    for key in ("cpu_ms", "rps", "ttft_p50", "ttft_p90", "total_p50", "total_p90"):
        reference = statistics.median(r[key] for r in rows["reference"])
        observe = statistics.median(r[key] for r in rows["observe"])
        ratios = [o[key] / r[key] for r, o in zip(rows["reference"], rows["observe"], strict=True)]
        print(f"  {key:10s} reference {reference:8.2f}  observe {observe:8.2f}  "
              f"observe/reference per round {', '.join(f'{x:.2f}' for x in ratios)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
