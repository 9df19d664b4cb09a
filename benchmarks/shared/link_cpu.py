"""What the shared-state link costs a replica per request, and how stale what it shares is, without Envoy.

Two replica processes, each a real table, scheduler and director (the built-in default profile, 4 endpoints)
deciding and completing synthetic requests (1 KB prompts in 8 shared-prefix groups, each held `--hold` s) at
`--rate` per second, sharing through a real local redis-server with the link's send interval set to each of
`--intervals`, and the same two processes without sharing (`off`). Variants run interleaved round by round.
Reports per variant the medians over rounds of: CPU µs per request of a replica (its process CPU over the
measured window), the extra over `off` in the same round, a replica's CPU while idle but connected, and the
staleness (epp_shared_state_staleness_seconds) p50/p90/p99 of load reports and inserts.

`python benchmarks/shared/link_cpu.py [--rate 300] [--seconds 4] [--rounds 3] [--intervals 0.005,0.01] [--ttft 0.02]`
(`--ttft`: each request's first chunk that long after its pick, so the latency model learns and shares its
observations; without it, requests only start and end)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry, generate_latest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent / "routing"))

from promtext import bucket_quantile, histogram_buckets  # noqa: E402

from epp.config.schema import default_config  # noqa: E402
from epp.datastore.table import Endpoint, EndpointTable  # noqa: E402
from epp.devstack.redis import RedisServer  # noqa: E402
from epp.director import Director  # noqa: E402
from epp.requests.openai import parse_openai_body  # noqa: E402
from epp.scheduling.framework import build_scheduler  # noqa: E402
from epp.shared.link import SharedState, Tuning  # noqa: E402
from epp.shared.metrics import COLLECTOR  # noqa: E402
from epp.shared.settings import parse_shared_state  # noqa: E402
from epp.shared.store import StoreConnection  # noqa: E402

FAMILY = "epp_shared_state_staleness_seconds"


def staleness(page: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for stream in ("load", "inserts"):
        lines = "\n".join(line for line in page.splitlines() if f'stream="{stream}"' in line)
        buckets = histogram_buckets(lines, FAMILY).get(FAMILY, [])
        for q in (0.5, 0.9, 0.99):
            found[f"{stream}_p{round(q * 100)}"] = round(1000 * bucket_quantile(buckets, q), 1) if buckets else 0.0
    return found


async def replica(args: argparse.Namespace) -> dict[str, float]:
    """One replica: idle window, then `seconds` of load; returns its CPU figures and staleness."""
    table = EndpointTable(16)
    for i in range(4):
        table.add(Endpoint("127.0.0.1", 9000 + i, name=f"server-{i}"))
    scheduler = build_scheduler(default_config(), table)
    director = Director(table, scheduler, hooks=scheduler)
    shared = None
    if args.url:
        tuning = Tuning(interval=args.interval)
        settings = parse_shared_state(args.url)
        shared = SharedState(settings, table, scheduler.plugins, args.scope, args.name, tuning)
        await shared.start()
        while shared.connected is not True:
            await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    print("ready", flush=True)  # both replicas measure the same windows: wait for the go
    await loop.run_in_executor(None, sys.stdin.readline)
    await asyncio.sleep(0.2)
    idle_started = time.process_time()
    await asyncio.sleep(args.idle)
    idle_cpu = (time.process_time() - idle_started) / args.idle
    lags: list[float] = []
    probe = asyncio.ensure_future(loop_lag(lags, time.monotonic() + 0.5 + args.seconds))
    systems = [f"System prompt of tenant {g}: answer in the house style, cite sources. " * 14 for g in range(8)]
    count = 0
    end = time.monotonic() + 0.5 + args.seconds
    measured_from = time.monotonic() + 0.5
    cpu_from = requests_from = None
    next_at = time.monotonic()
    while time.monotonic() < end:
        if cpu_from is None and time.monotonic() >= measured_from:
            cpu_from, requests_from = time.process_time(), count
        for _ in range(8):  # catch up a little when late, never a burst without bound
            if time.monotonic() < next_at:
                break
            count += 1
            raw = orjson.dumps({"model": "m", "prompt": systems[count % 8] + f"question {count}", "max_tokens": 8})
            body = parse_openai_body(raw, "/v1/completions")
            decision = director.decide(f"{args.name}-{count}", {}, body, raw, None)
            director.run_deferred_hooks(decision)
            if args.ttft > 0:  # the first chunk: queued prefill released, the latency model learns (and shares)
                loop.call_later(args.ttft, director.first_chunk, decision, True)
            loop.call_later(args.hold, director.complete, decision, None)
            next_at += 1.0 / args.rate
        await asyncio.sleep(max(next_at - time.monotonic(), 0.0))
    assert cpu_from is not None and requests_from is not None
    cpu = time.process_time() - cpu_from
    requests = max(count - requests_from, 1)
    await asyncio.sleep(args.hold + 0.05)
    await probe
    lags.sort()
    result = {
        "cpu_us_per_req": cpu / requests * 1e6,
        "requests": float(requests),
        "idle_cpu_ms_per_s": idle_cpu * 1e3,
        "loop_lag_p50": 1000 * lags[len(lags) // 2],
        "loop_lag_p99": 1000 * lags[int(len(lags) * 0.99)],
    }
    if shared is not None:
        registry = CollectorRegistry()
        registry.register(COLLECTOR)
        result.update(staleness(generate_latest(registry).decode()))
        await shared.stop()
    return result


async def loop_lag(lags: list[float], until: float, period: float = 0.005) -> None:
    """How late a `period` sleep wakes (the wait for a CPU and for the event loop), until `until`."""
    while time.monotonic() < until:
        asked = time.monotonic()
        await asyncio.sleep(period)
        lags.append(max(time.monotonic() - asked - period, 0.0))


def store_calls(url: str, reset: bool = False) -> dict[str, float]:
    """The store's XADD and XREAD calls so far (`reset`: zero its counters first)."""

    async def ask() -> dict[str, float]:
        client = StoreConnection(parse_shared_state(url), 2.0)
        try:
            if reset:
                await client.call(["CONFIG", "RESETSTAT"])
            [info] = await client.call(["INFO", "commandstats"])
        finally:
            await client.close()
        calls = {}
        for line in info.decode().splitlines():  # cmdstat_xadd:calls=12,usec=...
            name, _, fields = line.partition(":")
            if name in ("cmdstat_xadd", "cmdstat_xread"):
                calls[name.removeprefix("cmdstat_")] = float(fields.split(",")[0].removeprefix("calls="))
        return calls

    return asyncio.run(ask())


def run_pair(args: argparse.Namespace, url: str, interval: float, scope: str) -> list[dict[str, float]]:
    command = [sys.executable, __file__, "--worker", "--rate", str(args.rate), "--seconds", str(args.seconds),
               "--hold", str(args.hold), "--ttft", str(args.ttft), "--idle", str(args.idle),
               "--interval", str(interval), "--scope", scope]  # fmt: skip
    workers = [
        subprocess.Popen(
            [*command, "--name", f"r{i}", "--url", url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for i in range(2)
    ]
    for worker in workers:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready"
    if url:
        store_calls(url, reset=True)
    for worker in workers:  # both start together: each applies the other's records while under load itself
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    results = []
    for worker in workers:
        out, _ = worker.communicate(timeout=120 + args.seconds * 4)
        results.append(json.loads(out.strip().splitlines()[-1]))
    if url:  # from the go to the end (the idle window included), per request of either replica
        requests = sum(r["requests"] for r in results)
        for name, count in store_calls(url).items():
            for result in results:
                result[f"{name}_per_req"] = count / requests
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second per replica")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--hold", type=float, default=0.05, help="seconds each request stays in flight")
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds to a request's first chunk (0: none)")
    parser.add_argument("--idle", type=float, default=2.0, help="seconds of the idle measure before the load")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--intervals", default="0.005,0.01")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--name", default="r0", help=argparse.SUPPRESS)
    parser.add_argument("--scope", default="bench/link", help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, default=0.005, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(replica(args))))
        return 0
    variants = ["off", *args.intervals.split(",")]
    samples: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    print(f"# link CPU: 2 replicas x {args.rate:.0f} req/s, {args.seconds:.0f}s measured, hold {args.hold}s, "
          f"{args.rounds} rounds interleaved, {time.strftime('%Y-%m-%d %H:%M')}")  # fmt: skip
    with RedisServer() as store:
        for round_index in range(args.rounds):
            base = 0.0
            for variant in variants:
                url = "" if variant == "off" else store.url
                interval = 0.005 if variant == "off" else float(variant)
                pair = run_pair(args, url, interval, f"bench/{variant}-{round_index}")
                cpu = statistics.mean(r["cpu_us_per_req"] for r in pair)
                base = cpu if variant == "off" else base
                sample = {key: statistics.mean(r.get(key, 0.0) for r in pair) for key in pair[0]}
                sample["extra_us_per_req"] = cpu - base
                sample["ratio_to_off"] = cpu / base
                samples[variant].append(sample)
                print(f"round {round_index + 1} {variant}: " + json.dumps({k: round(v, 2) for k, v in sample.items()}),
                      flush=True)  # fmt: skip
    print("\n| variant | CPU µs/req | extra µs/req vs off | ratio vs off | idle CPU ms/s | XADD / XREAD per req "
          "| staleness load p50/p90/p99 ms | inserts p50/p90/p99 ms | loop lag p50/p99 ms |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|---|---|---|")
    for variant in variants:
        rows = samples[variant]
        m = {key: statistics.median(row.get(key, 0.0) for row in rows) for key in rows[0]}
        load = "/".join(f"{m.get(f'load_p{q}', 0.0):.1f}" for q in (50, 90, 99))
        inserts = "/".join(f"{m.get(f'inserts_p{q}', 0.0):.1f}" for q in (50, 90, 99))
        calls = f"{m.get('xadd_per_req', 0.0):.2f} / {m.get('xread_per_req', 0.0):.2f}"
        name = "off" if variant == "off" else f"interval {float(variant) * 1000:g} ms"
        shared = variant != "off"
        print(f"| {name} | {m['cpu_us_per_req']:.0f} | {m['extra_us_per_req']:.1f} | {m['ratio_to_off']:.3f} | "
              f"{m['idle_cpu_ms_per_s']:.2f} | {calls if shared else '-'} | {load if shared else '-'} | "
              f"{inserts if shared else '-'} | {m['loop_lag_p50']:.1f}/{m['loop_lag_p99']:.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
