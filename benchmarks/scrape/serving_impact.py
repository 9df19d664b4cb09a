"""Does the scrape plane slow the serving path? The ext_proc benchmark's setup (real Envoy `--concurrency 1`
→ epp → nginx on 4 ports, wrk -c16 keep-alive POSTs of a 1 KB completions body) run with two endpoint sets:

- `serve-only`: the 4 nginx endpoints;
- `serve+scrape`: the same 4 plus N endpoints served by benchmarks/scrape/pageserver.py (a full 42 KB vLLM
  page on N ports), which the epp's scrape plane polls every --refresh-metrics-interval (N=1000 at 50 ms
  is 20,000 scrapes/s). A label-selector-filter keeps picks on the nginx endpoints, so only the scraping
  differs between the two.

On this 2-core machine the scrape process and the page server are pinned to core 1 and everything on the
serving path (Envoy, epp's main process, nginx, wrk) to core 0, in both phases, so the comparison shows
what scraping costs the serving core, not what it costs the machine.

`python benchmarks/scrape/serving_impact.py [--endpoints 1000] [--interval 50ms] [--duration 8] [--rounds 2]`
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent / "extproc"))

from run import LUA, body_of, run_wrk, start_nginx  # noqa: E402

from epp.devstack.envoy import EnvoyProcess, env_without_proxies, free_port, free_port_range, render_bootstrap  # noqa: E402
from epp.devstack.processes import EppProcess  # noqa: E402

SERVING_CORE, SCRAPE_CORE = {0}, {1}
CONFIG = """\
plugins:
- type: label-selector-filter
  parameters: {matchLabels: {role: serve}}
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: label-selector-filter}
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: prefix-cache-scorer, weight: 3}
"""


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def phase(
    name: str, endpoints: list[dict[str, object]], args: argparse.Namespace, work: Path, lua: Path
) -> list[float]:
    endpoints_file = work / f"{name}.yaml"
    endpoints_file.write_text(yaml.safe_dump({"endpoints": endpoints}))
    config = work / "config.yaml"
    config.write_text(CONFIG)
    epp = EppProcess(
        ["--endpoints-file", str(endpoints_file), "--config-file", str(config), "--secure-serving=false",
         "--v", "1", "--tracing=false", "--refresh-metrics-interval", args.interval,
         "--max-endpoints", str(max(len(endpoints), 16))]
    )  # fmt: skip
    began = time.monotonic()
    epp.start()
    assert epp.process is not None
    os.sched_setaffinity(epp.process.pid, SERVING_CORE)
    for child in children(epp.process.pid):  # the scrape plane's process
        os.sched_setaffinity(child, SCRAPE_CORE)
    bootstrap = render_bootstrap(
        "envoy", free_port(), free_port(), epp.grpc_port, epp_tls=False,
        request_body_mode="FULL_DUPLEX_STREAMED", response_body_mode="FULL_DUPLEX_STREAMED",
    )  # fmt: skip
    rates = []
    try:
        with EnvoyProcess(bootstrap, concurrency=1) as envoy:
            assert envoy.process is not None
            os.sched_setaffinity(envoy.process.pid, SERVING_CORE)
            run_wrk(envoy.listener_port, lua, 16, 2)
            for _ in range(args.rounds):
                rates.append(run_wrk(envoy.listener_port, lua, 16, args.duration)["rps"])
                print(f"  {name}: {rates[-1]:,.0f} req/s", flush=True)
    finally:
        epp.stop()
    return rates, time.monotonic() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--interval", default="50ms")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
        print("needs 2 cores: one for serving, one for scraping")
        return 2
    os.sched_setaffinity(0, SERVING_CORE)  # wrk and nginx inherit this
    work = Path(tempfile.mkdtemp(prefix="scrape-impact-"))
    nginx_ports = [free_port() for _ in range(4)]
    nginx = start_nginx(nginx_ports, work)
    body = work / "body.json"
    body.write_bytes(body_of(1024))
    lua = work / "post.lua"
    lua.write_text(LUA % body)
    serve = [{"address": "127.0.0.1", "port": p, "labels": {"role": "serve"}} for p in nginx_ports]
    base = free_port_range(args.endpoints)
    scraped = [
        {"address": "127.0.0.1", "port": base + i, "labels": {"role": "metrics-only"}} for i in range(args.endpoints)
    ]
    pages = subprocess.Popen(
        [sys.executable, str(HERE / "pageserver.py"), "--ports", str(args.endpoints), "--base-port", str(base),
         "--page", str(ROOT / "tests" / "fixtures" / "metrics" / "vllm.txt")],
        stdout=subprocess.PIPE, env=env_without_proxies(), preexec_fn=lambda: os.sched_setaffinity(0, SCRAPE_CORE),
    )  # fmt: skip
    try:
        time.sleep(1.5)
        results: dict[str, list[float]] = {"serve-only": [], "serve+scrape": []}
        scraping_time = 0.0
        for _ in range(2):  # alternate, so drift on the shared machine hits both
            results["serve-only"] += phase("serve-only", serve, args, work, lua)[0]
            rates, seconds = phase("serve+scrape", serve + scraped, args, work, lua)
            results["serve+scrape"] += rates
            scraping_time += seconds
    finally:
        pages.terminate()
        out, _ = pages.communicate(timeout=10)
        nginx.terminate()
        nginx.wait(10)
    served = int(out.decode().split()[-1]) if out else 0
    alone, scraping = statistics.median(results["serve-only"]), statistics.median(results["serve+scrape"])
    print(
        f"\nserve-only {alone:,.0f} req/s, serve+scrape {scraping:,.0f} req/s (medians), ratio {scraping / alone:.3f}"
    )
    print(
        f"scrape plane: {served:,} pages in {scraping_time:.0f} s of serve+scrape phases = "
        f"{served / scraping_time:,.0f} scrapes/s (demanded: {args.endpoints} endpoints every {args.interval})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
