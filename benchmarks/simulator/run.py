"""One simulated vLLM server against the published single-server figures it is calibrated on.

Calibration source: John Musgrave, "vLLM throughput-latency sweep on NVIDIA A100"
(https://johnmusgrave.com/p/vllm-throughput-latency-sweep-on): Llama-3.1-8B-Instruct BF16, vLLM 0.23.0,
one A100-40GB, `vllm bench serve --dataset-name random --random-input-len 1024 --random-output-len 128
--ignore-eos --max-concurrency C --num-prompts 20C --request-rate inf` for C = 1 … 64.

The same sweep is replayed against the simulator's engine in virtual time (exact, a few seconds of CPU) and,
with --http, against the real HTTP server (`python -m vllmsim.cli`) at --time-scale with times scaled back,
which shows what the server adds. Then TTFT against prompt length on an idle server, cold and with a
prefix-cache hit, and the KV-cache size. Everything the source does not publish is printed with "-".

`python benchmarks/simulator/run.py [--http] [--time-scale 4]`
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import aiohttp
import orjson

from epp.devstack.envoy import env_without_proxies, free_port
from vllmsim.engine import Engine, EngineConfig, tokens_of
from vllmsim.virtual import Job, Outcome, closed_loop

SOURCE = "https://johnmusgrave.com/p/vllm-throughput-latency-sweep-on"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)
#: what the source states in its text: decode at C=1 "about 75 tokens/sec" (per request, i.e. 1/TPOT);
#: output throughput at C=8 is "a 6.6x gain" over C=1; the knee is at C=8 (TPOT climbs past it).
PUBLISHED_TPOT_C1_MS = 1000 / 75
PUBLISHED_GAIN_C8 = 6.6


def prompt(rng: random.Random, tokens: int) -> str:
    return "".join(f"{rng.randrange(16**4):04x}" for _ in range(tokens))


@dataclass
class Point:
    concurrency: int
    output_tps: float
    ttft_mean: float
    ttft_median: float
    ttft_p99: float
    tpot_mean: float


def point(concurrency: int, outcomes: list[Outcome], duration: float) -> Point:
    ttfts = sorted(o.ttft for o in outcomes)
    return Point(
        concurrency,
        sum(o.output_tokens for o in outcomes) / duration,
        statistics.fmean(ttfts),
        statistics.median(ttfts),
        ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))],
        statistics.fmean(o.tpot for o in outcomes),
    )


def sweep_jobs(concurrency: int, seed: int) -> list[Job]:
    rng = random.Random(seed)
    return [Job(prompt(rng, 1024), 128, seed=MODEL) for _ in range(concurrency * 20)]


def engine_sweep(config: EngineConfig) -> list[Point]:
    points = []
    for c in CONCURRENCY:
        run = closed_loop(config, sweep_jobs(c, c), c)
        points.append(point(c, run.outcomes, run.duration))
    return points


async def _http_request(session: aiohttp.ClientSession, url: str, job: Job, scale: float, sent: float) -> Outcome:
    body = {"model": MODEL, "prompt": job.prompt, "max_tokens": job.max_tokens, "ignore_eos": True, "stream": True}
    outcome = Outcome(job, sent * scale)
    started = time.perf_counter()
    async with session.post(url, data=orjson.dumps(body), headers={"content-type": "application/json"}) as response:
        async for line in response.content:
            if line.startswith(b"data: {"):
                now = (time.perf_counter() - started + sent) * scale
                document = orjson.loads(line[6:])
                text = document["choices"][0]["text"] if document.get("choices") else ""
                if not outcome.output_tokens:
                    outcome.first_token = now
                outcome.output_tokens += text.count(" tok")
                outcome.finished = now
    return outcome


async def _http_closed_loop(port: int, concurrency: int, scale: float) -> Point:
    jobs = sweep_jobs(concurrency, concurrency)
    jobs.reverse()
    outcomes: list[Outcome] = []
    url = f"http://127.0.0.1:{port}/v1/completions"
    async with aiohttp.ClientSession(trust_env=False, timeout=aiohttp.ClientTimeout(total=300)) as session:
        started = time.perf_counter()

        async def client() -> None:
            while jobs:
                job = jobs.pop()
                outcomes.append(await _http_request(session, url, job, scale, time.perf_counter() - started))

        await asyncio.gather(*(client() for _ in range(concurrency)))
        duration = (time.perf_counter() - started) * scale
    return point(concurrency, outcomes, duration)


def http_sweep(scale: float, levels: tuple[int, ...]) -> list[Point]:
    port = free_port()
    command = [sys.executable, "-m", "vllmsim.cli", "--port", str(port), "--time-scale", str(scale)]
    server = subprocess.Popen(command, env=env_without_proxies(), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                asyncio.run(_probe(port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        return [asyncio.run(_http_closed_loop(port, c, scale)) for c in levels]
    finally:
        server.terminate()
        server.wait(10)


async def _probe(port: int) -> None:
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.get(f"http://127.0.0.1:{port}/health") as response,
    ):
        response.raise_for_status()


def ttft_idle(config: EngineConfig, text: str, warm: str | None = None) -> float:
    """TTFT of one request on an idle engine, after `warm` (if any) has finished on it."""
    engine = Engine(config)
    for body in ([warm] if warm else []) + [text]:
        sequence = engine.add(body, 1, seed=MODEL)
        elapsed = 0.0
        while not sequence.done:
            elapsed += engine.step()
            engine.finish_step()
    return elapsed


def print_sweep(title: str, points: list[Point]) -> None:
    base = points[0].output_tps
    print(f"\n### {title}\n")
    print("| C | output tok/s | gain vs C=1 | published gain | TTFT mean | TTFT p99 | TPOT mean | published TPOT |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in points:
        gain = f"{PUBLISHED_GAIN_C8:.1f}x" if p.concurrency == 8 else "1.0x" if p.concurrency == 1 else "-"
        tpot = f"{PUBLISHED_TPOT_C1_MS:.1f} ms" if p.concurrency == 1 else "-"
        print(
            f"| {p.concurrency} | {p.output_tps:.0f} | {p.output_tps / base:.2f}x | {gain} | "
            f"{p.ttft_mean * 1e3:.0f} ms | {p.ttft_p99 * 1e3:.0f} ms | {p.tpot_mean * 1e3:.1f} ms | {tpot} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--http", action="store_true", help="also drive the HTTP server (takes ~2 minutes)")
    parser.add_argument("--time-scale", type=float, default=4.0, help="speed-up of the HTTP server run")
    parser.add_argument("--http-levels", default="1,8,32")
    args = parser.parse_args()
    config = EngineConfig()
    print(f"# vllmsim vs {SOURCE}\n")
    print(
        f"Engine defaults: max_num_seqs {config.max_num_seqs}, max_num_batched_tokens {config.max_num_batched_tokens}, "
        f"{config.num_gpu_blocks} blocks x {config.block_size} tokens = {config.num_gpu_blocks * config.block_size:,} "
        f"KV tokens; weights read {config.weights_read_s * 1e3:.1f} ms, KV read "
        f"{config.kv_read_s_per_token * 1e9:.1f} ns/token, compute {config.compute_s_per_token * 1e6:.1f} us/token"
    )
    print_sweep("Concurrency sweep, 1024 in / 128 out, 20xC prompts (engine, virtual time)", engine_sweep(config))
    if args.http:
        levels = tuple(int(c) for c in args.http_levels.split(","))
        points = http_sweep(args.time_scale, levels)
        print_sweep(f"Same sweep through the HTTP server at --time-scale {args.time_scale:g} (scaled back)", points)

    print("\n### TTFT of one request on an idle server (engine)\n")
    print("| prompt tokens | cold | prefix-cache hit (same prompt again) | 90 % shared prefix cached |")
    print("|---:|---:|---:|---:|")
    rng = random.Random(3)
    for tokens in (128, 256, 512, 1024, 2048, 4096, 8192, 16384):
        text = prompt(rng, tokens)
        shared = text[: int(len(text) * 0.9)]
        other = shared + prompt(rng, tokens - tokens_of(shared))
        cold, hit, partial = ttft_idle(config, text), ttft_idle(config, text, text), ttft_idle(config, other, text)
        print(f"| {tokens} | {cold * 1e3:.0f} ms | {hit * 1e3:.1f} ms | {partial * 1e3:.0f} ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
