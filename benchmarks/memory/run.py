"""Memory of a running `epp` against the number of endpoints it knows and scrapes.

python benchmarks/memory/run.py --endpoints 0,1000,4000 [--requests 2000]

For each count N: one page server (`benchmarks/scrape/pageserver.py`: N ports on 127.0.0.1, each serving the
42 KB vLLM fixture page), `epp --endpoints-file` listing those N endpoints (plus one echo-free placeholder when
N = 0), scraped every 50 ms; once every endpoint is fresh (`inference_pool_ready_pods` = N) and `--requests`
completions requests have been routed through ext_proc (distinct prompts, so the prefix index holds entries),
it reads the proportional set size (PSS, /proc/PID/smaps_rollup: the shared-memory endpoint table is counted
once, split between the two processes) of epp's main process and of its scrape-plane child. The slope between
the counts is the memory per 1,000 endpoints; the N = 0 row is the fixed cost.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from epp.devstack.envoy import free_port  # noqa: E402
from epp.devstack.processes import EppProcess  # noqa: E402
from epp.extproc.messages import FULL_DUPLEX  # noqa: E402
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb  # noqa: E402

METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
PAGE = ROOT / "tests" / "fixtures" / "metrics" / "vllm.txt"


def pss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    match = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    assert match is not None, text
    return int(match.group(1))


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} not listening after {timeout}s")


def ready_pods(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        page = response.read().decode()
    match = re.search(r"^inference_pool_ready_pods\{[^}]*\} (\S+)$", page, re.M)
    return float(match.group(1)) if match else 0.0


async def route(port: int, requests: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        process = channel.stream_stream(
            METHOD,
            request_serializer=pb.ProcessingRequest.SerializeToString,
            response_deserializer=pb.ProcessingResponse.FromString,
        )
        for i in range(requests):
            headers = pb.ProcessingRequest()
            headers.request_headers.headers.headers.add(key=":path", raw_value=b"/v1/completions")
            headers.protocol_config.request_body_mode = FULL_DUPLEX  # type: ignore[assignment]
            body = pb.ProcessingRequest()
            prompt = f"request {i}: " + "a shared system prompt of some length. " * 20
            body.request_body.body = b'{"model":"m","prompt":"%s"}' % prompt.encode()
            body.request_body.end_of_stream = True
            call = process(iter([headers, body]))
            async for _ in call:
                break
            call.cancel()


def measure(count: int, requests: int, base_port: int) -> dict[str, float]:
    server = None
    endpoints = Path(tempfile.mkdtemp(prefix="epp-memory-")) / "endpoints.yaml"
    if count:
        server = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "scrape" / "pageserver.py"), "--ports", str(count),
             "--base-port", str(base_port), "--page", str(PAGE)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(base_port + count - 1)
        lines = [f"- {{address: 127.0.0.1, port: {base_port + i}}}" for i in range(count)]
    else:
        lines = [f"- {{address: 127.0.0.1, port: {free_port()}}}"]
    endpoints.write_text("endpoints:\n" + "\n".join(lines) + "\n")
    # one core scrapes ~25k pages/s: past ~1,000 endpoints the interval grows so every endpoint stays fresh
    interval = max(0.05, count / 10_000)
    epp = EppProcess(
        ["--endpoints-file", str(endpoints), "--max-endpoints", str(max(count, 1)), "--secure-serving=false",
         "--v", "1", "--tracing=false", "--refresh-prometheus-metrics-interval", "100ms",
         "--refresh-metrics-interval", f"{interval}s", "--metrics-staleness-threshold", f"{4 * interval + 2}s"]
    )  # fmt: skip
    try:
        epp.start(timeout=60)
        deadline = time.monotonic() + 120
        while count and ready_pods(epp.metrics_port) < count:
            assert time.monotonic() < deadline, "endpoints not all fresh after 120s"
            time.sleep(0.5)
        asyncio.run(route(epp.grpc_port, requests))
        time.sleep(2.0)  # a few more scrape rounds
        assert epp.process is not None
        main_pid = epp.process.pid
        child_pids = children(main_pid)
        main = pss_kib(main_pid)
        helpers = sum(pss_kib(pid) for pid in child_pids)  # the scrape plane and the resource tracker
        return {
            "endpoints": count,
            "main_mib": main / 1024,
            "children_mib": helpers / 1024,
            "total_mib": (main + helpers) / 1024,
        }
    finally:
        epp.stop()
        if server is not None:
            server.terminate()
            server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", default="0,1000,4000")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--base-port", type=int, default=23000)
    args = parser.parse_args()
    rows = [measure(int(n), args.requests, args.base_port) for n in args.endpoints.split(",")]
    print(f"{'endpoints':>9} {'main PSS MiB':>13} {'children PSS MiB':>15} {'total MiB':>10}")
    for row in rows:
        print(
            f"{row['endpoints']:>9.0f} {row['main_mib']:>13.1f} {row['children_mib']:>15.1f} {row['total_mib']:>10.1f}"
        )
    first, last = min(rows, key=lambda r: r["endpoints"]), max(rows, key=lambda r: r["endpoints"])
    if last["endpoints"] > first["endpoints"]:
        slope = (last["total_mib"] - first["total_mib"]) / (last["endpoints"] - first["endpoints"]) * 1000
        print(f"per 1,000 endpoints: {slope:.1f} MiB (from {first['endpoints']:.0f} to {last['endpoints']:.0f})")


if __name__ == "__main__":
    main()
