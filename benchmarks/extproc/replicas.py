"""What sharing state costs per request, and what a second replica adds, through real Envoy.

Configurations, interleaved round by round in one run (the machine is shared: compare within a run):
- `one`: one epp, no --shared-state (the baseline);
- `one-shared`: one epp with --shared-state to a local redis-server, a second (idle) replica of its pool connected,
  so the measured one publishes its load and inserts to a live peer;
- `two-shared`: two epp replicas sharing state, Envoy spreading streams over both (envoy-replicas.yaml); each
  also applies the other's prefix inserts;
- `two-independent`: the same two replicas' setup without --shared-state.
Envoy → ext_proc (FULL_DUPLEX_STREAMED, plaintext) → nginx (`return 200`) on 4 ports; wrk drives keep-alive
POSTs of a JSON completions body. Reports req/s, p50/p99 and CPU µs per request of the epp processes (all
replicas summed) and of redis-server, as medians over the rounds, and the CPU ratio of each configuration to
`one` measured in the same round; before the rounds, the CPU each replica spends idle, sharing and not.

`python benchmarks/extproc/replicas.py [--rounds 3] [--duration 8] [--concurrency 32] [--body 1024]`
(needs wrk and nginx: `bash benchmarks/extproc/run.sh --help` installs them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import LUA, RESULTS, body_of, cpu_seconds, run_wrk, start_nginx  # noqa: E402

sys.path.insert(0, str(HERE.parent / "routing"))
from promtext import bucket_quantile, histogram_buckets, scrape  # noqa: E402

from epp.devstack.envoy import EnvoyProcess, free_port, render_bootstrap  # noqa: E402
from epp.devstack.processes import EppProcess  # noqa: E402
from epp.devstack.redis import RedisServer  # noqa: E402

CONFIGS = ("one", "one-shared", "two-shared", "two-independent")


def staleness_ms(page: str) -> dict[str, float]:
    """p50/p90/p99 of epp_shared_state_staleness_seconds per stream, in milliseconds."""
    found: dict[str, float] = {}
    for stream in ("load", "inserts"):
        lines = "\n".join(line for line in page.splitlines() if f'stream="{stream}"' in line)
        family = "epp_shared_state_staleness_seconds"
        buckets = histogram_buckets(lines, family).get(family, [])
        for q in (0.5, 0.9, 0.99):
            found[f"{stream}_p{round(q * 100)}"] = round(1000 * bucket_quantile(buckets, q), 1)
    return found


def idle_cpu_ms_per_s(groups: dict[str, list[EppProcess]], seconds: float) -> dict[str, float]:
    """CPU ms per second of each replica of each group, medians, while no request arrives."""
    time.sleep(1.0)
    pids = {name: [r.process.pid for r in replicas if r.process is not None] for name, replicas in groups.items()}
    before = {name: [cpu_seconds(pid) for pid in ids] for name, ids in pids.items()}
    time.sleep(seconds)
    return {
        name: round(statistics.median(cpu_seconds(pid) - b for pid, b in zip(ids, before[name], strict=True))
                    / seconds * 1000, 2)
        for name, ids in pids.items()
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds the idle replicas' CPU is measured")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--body", type=int, default=1024)
    parser.add_argument("--envoy-concurrency", type=int, default=1)
    parser.add_argument("--epp-args", default="", help="extra epp flags, e.g. '--config-file config/default.yaml'")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: run benchmarks/extproc/run.sh --help (installs wrk and nginx-light)")
            return 2
    workdir = Path(tempfile.mkdtemp(prefix="epp-replicas-"))
    backend_ports = [free_port() for _ in range(4)]
    backends = ",".join(f"127.0.0.1:{p}" for p in backend_ports)
    nginx = start_nginx(backend_ports, workdir)
    store = RedisServer()
    store.start()
    assert store.process is not None
    flags = ["--endpoints", backends, "--secure-serving=false", "--v", "1", "--tracing=false", "--health-checking",
             *args.epp_args.split()]  # fmt: skip
    shared_flags = [*flags, "--shared-state", store.url]
    groups = {
        "one": [EppProcess(flags)],
        "one-shared": [EppProcess(shared_flags, env={"POD_NAME": "measured", "NAMESPACE": "one"})],
        "two-shared": [EppProcess(shared_flags, env={"POD_NAME": f"pair-{i}", "NAMESPACE": "two"}) for i in range(2)],
        "two-independent": [EppProcess(flags) for _ in range(2)],
    }
    # the pair shares with each other only, the measured one with its idle peer only (pools of their own)
    idle_peer = EppProcess(shared_flags, env={"POD_NAME": "idle-peer", "NAMESPACE": "one"})
    envoys: dict[str, EnvoyProcess] = {}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    staleness: dict[str, dict[str, float]] = {}
    idle_cpu: dict[str, float] = {}
    try:
        for replicas in [*groups.values(), [idle_peer]]:
            for replica in replicas:
                replica.start()
        for name, replicas in groups.items():
            ports = [r.grpc_port for r in replicas]
            listener, admin = free_port(), free_port()
            bootstrap = "envoy-replicas" if len(ports) > 1 else "envoy"
            config = render_bootstrap(bootstrap, listener, admin, ports[0], epp_tls=False, epp_ports=ports)
            envoys[name] = EnvoyProcess(config, concurrency=args.envoy_concurrency)
            envoys[name].start()
        idle = {"shared": [*groups["two-shared"], idle_peer], "independent": groups["two-independent"]}
        idle_cpu = idle_cpu_ms_per_s(idle, args.idle)
        body_file = workdir / "body.json"
        body_file.write_bytes(body_of(args.body))
        lua = workdir / "post.lua"
        lua.write_text(LUA % body_file)
        print(f"# epp replicas — {platform.node()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
        print(f"# wrk -t1 -c{args.concurrency}, body {args.body} B, {args.duration:.0f}s per point after "
              f"{args.warmup:.0f}s warm-up, {args.rounds} rounds interleaved; Envoy --concurrency "
              f"{args.envoy_concurrency}\n")  # fmt: skip
        for round_index in range(args.rounds):
            for name in CONFIGS:
                envoy, replicas = envoys[name], groups[name]
                run_wrk(envoy.listener_port, lua, args.concurrency, args.warmup)
                pids = [r.process.pid for r in replicas if r.process is not None]
                before = sum(cpu_seconds(pid) for pid in pids), cpu_seconds(store.process.pid)
                result = run_wrk(envoy.listener_port, lua, args.concurrency, args.duration)
                after = sum(cpu_seconds(pid) for pid in pids), cpu_seconds(store.process.pid)
                requests = max(result["requests"], 1.0)
                sample = {
                    "rps": result["rps"],
                    "p50_ms": result["p50"],
                    "p99_ms": result["p99"],
                    "errors": result["errors"],
                    "epp_cpu_us_per_req": (after[0] - before[0]) / requests * 1e6,
                    "epp_cores": (after[0] - before[0]) / args.duration,
                    "redis_cpu_us_per_req": (after[1] - before[1]) / requests * 1e6,
                }
                samples[name].append(sample)
                print(f"round {round_index + 1} {name}: " + json.dumps({k: round(v, 2) for k, v in sample.items()}),
                      flush=True)  # fmt: skip
        staleness = {
            f"pair-{i}": staleness_ms(scrape(f"http://127.0.0.1:{replica.metrics_port}/metrics"))
            for i, replica in enumerate(groups["two-shared"])
        }
    finally:
        for envoy in envoys.values():
            envoy.stop()
        for replicas in [*groups.values(), [idle_peer]]:
            for replica in replicas:
                replica.stop()
        store.close()
        nginx.terminate()
        nginx.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n| config | req/s | p50 ms | p99 ms | epp cores | epp CPU µs/req | vs one | redis µs/req | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for name in CONFIGS:
        rows = samples[name]
        ratios = [
            row["epp_cpu_us_per_req"] / base["epp_cpu_us_per_req"]
            for row, base in zip(rows, samples["one"], strict=True)
        ]
        median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        median["cpu_ratio_to_one"] = statistics.median(ratios)
        summary[name] = median
        print(f"| {name} | {median['rps']:,.0f} | {median['p50_ms']:.2f} | {median['p99_ms']:.2f} | "
              f"{median['epp_cores']:.2f} | {median['epp_cpu_us_per_req']:.0f} | {median['cpu_ratio_to_one']:.3f} | "
              f"{median['redis_cpu_us_per_req']:.1f} | {median['errors']:.0f} |")  # fmt: skip
    print(f"\nstaleness of shared state in two-shared (ms): {json.dumps(staleness)}")
    print(f"idle replicas before the rounds, CPU ms per second each: {json.dumps(idle_cpu)}")
    per_core = summary["one"]["rps"] / max(summary["one"]["epp_cores"], 1e-9)
    print(f"\none replica: {per_core:,.0f} req/s per core of epp CPU")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"replicas-{time.strftime('%Y%m%d-%H%M%S')}.json"
    record = {
        "args": vars(args),
        "samples": samples,
        "summary": summary,
        "staleness_ms": staleness,
        "idle_replica_cpu_ms_per_s": idle_cpu,
    }
    out.write_text(json.dumps(record, indent=1))
    print(f"raw results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
