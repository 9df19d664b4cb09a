"""Scrape-plane benchmark: sustained scrapes/s (and CPU) against N simulated endpoints serving a full page.

python benchmarks/scrape/run.py --endpoints 1000 --interval 0.05 --duration 10

Starts `pageserver.py` (one process, N ports, the fixture vLLM page), fills a shared-memory table with
N endpoints, runs the ScrapePlane in its own process and reports scrapes/s, the scrape process's CPU
(scrapes per CPU-second = what one core sustains), data freshness, and the throughput of a serving-core
proxy loop (numpy picks over the table) before and while the plane runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from epp.datalayer.params import CoreMetricsExtractorParams, MetricsDataSourceParams  # noqa: E402
from epp.datalayer.scraper import ScrapePlane, create_shared_table  # noqa: E402
from epp.datalayer.staleness import fresh_mask  # noqa: E402
from epp.datastore.table import Endpoint, EndpointTable  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"page server did not open port {port}")


def serving_probe(table: EndpointTable, seconds: float) -> float:
    """Picks/s of a stand-in for the serving core: score all live endpoints from the columns, pick one."""
    slots = table.live_slots()
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(50):
            now = time.monotonic()
            fresh = fresh_mask(table, slots, 2.0, now)
            score = table.waiting_queue[slots] + table.kv_usage[slots] * 10.0 + (~fresh) * 1e6
            int(slots[int(np.argmin(score))])
        n += 50
    return n / seconds


async def bench(args: argparse.Namespace) -> dict[str, object]:
    table, shm = create_shared_table(max(args.endpoints, 1))
    for i in range(args.endpoints):
        table.add(Endpoint("127.0.0.1", args.base_port + i, name=f"pod-{i}"))
    plane = ScrapePlane()
    result: dict[str, object] = {}
    try:
        result["serving_picks_per_s_idle"] = serving_probe(table, args.probe)
        plane.start(
            table,
            MetricsDataSourceParams(),
            CoreMetricsExtractorParams(),
            args.interval,
            timeout_s=1.0,
            mode="process",
        )
        pid = plane._process.pid
        await asyncio.sleep(args.warmup)
        s0, e0, c0, t0 = plane.scrapes_total, plane.errors_total, cpu_seconds(pid), time.monotonic()
        sc0 = cpu_seconds(args.server_pid)
        await asyncio.sleep(args.duration)
        s1, e1, c1, t1 = plane.scrapes_total, plane.errors_total, cpu_seconds(pid), time.monotonic()
        sc1 = cpu_seconds(args.server_pid)
        wall = t1 - t0
        scrapes = s1 - s0
        cpu = c1 - c0
        slots = table.live_slots()
        fresh = fresh_mask(table, slots, 2.0, time.monotonic())
        age = time.monotonic() - table.metrics_time[slots]
        # serving proxy while the plane runs (runs the parent loop's thread; the plane is a process)
        picks_busy = await asyncio.get_running_loop().run_in_executor(None, serving_probe, table, args.probe)
        result.update(
            endpoints=args.endpoints,
            interval_s=args.interval,
            demanded_scrapes_per_s=args.endpoints / args.interval,
            page_bytes=len(Path(args.page).read_bytes()),
            scrapes_per_s=scrapes / wall,
            errors_per_s=(e1 - e0) / wall,
            scrape_process_cpu_frac=cpu / wall,
            scrapes_per_cpu_second=scrapes / cpu if cpu else None,
            page_server_cpu_frac=(sc1 - sc0) / wall,
            fresh_fraction=float(fresh.mean()) if len(slots) else 0.0,
            max_age_s=float(age.max()) if len(slots) else 0.0,
            p50_age_s=float(np.median(age)) if len(slots) else 0.0,
            kv_usage_sample=float(table.kv_usage[slots[0]]) if len(slots) else None,
            lora_sample=sorted(table.lora_active[int(slots[0])]) if len(slots) else None,
            serving_picks_per_s_while_scraping=picks_busy,
        )
    finally:
        await plane.stop()
        del table
        gc.collect()
        with contextlib.suppress(BufferError):
            shm.close()
        shm.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.05, help="scrape interval per endpoint (s)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--probe", type=float, default=2.0, help="seconds of serving-proxy loop per phase")
    parser.add_argument("--base-port", type=int, default=21000)
    parser.add_argument("--page", default=str(ROOT / "tests" / "fixtures" / "metrics" / "vllm.txt"))
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    server = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("pageserver.py")),
            "--ports",
            str(args.endpoints),
            "--base-port",
            str(args.base_port),
            "--page",
            args.page,
        ]
    )
    try:
        wait_port(args.base_port + args.endpoints - 1)
        args.server_pid = server.pid
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        result = asyncio.run(bench(args))
    finally:
        server.terminate()
        server.wait(10)
    result.update(cpus=os.cpu_count(), python=platform.python_version(), time=time.strftime("%Y-%m-%dT%H:%M:%SZ"))
    print(json.dumps(result, indent=2))
    if not args.no_save:
        out = ROOT / "benchmarks" / "results" / f"scrape-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"saved {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
