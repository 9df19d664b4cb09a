"""ext_proc through real Envoy: Envoy direct vs a bare grpc.aio picker vs epp, in one run.

Envoy (`--concurrency 1`) → ext_proc server → nginx (1 worker, `return 200`) on 4 ports. wrk drives HTTP/1.1
keep-alive POSTs of a JSON completions body. For every body size and concurrency the configurations run
back to back: Envoy direct (no ext_proc), bare server and epp in FULL_DUPLEX_STREAMED (both directions,
as the reference) and in BUFFERED mode; optionally `shell-fd` / `shell-buffered`: epp's whole process
with the bare servicer in place of its own (epp_shell.py), which isolates what epp's per-request code
costs. Reports req/s, p50/p99, the ratio to direct and to the bare server, the ext_proc server's CPU µs
per request (utime+stime of the whole process over the window) and, for epp, the µs per request its own
processing metrics report (its Python on the request path, measured live).

`python benchmarks/extproc/run.py [--duration 10] [--concurrency 1,16,64] [--bodies 1024,65536]`
(needs wrk and nginx: `bash benchmarks/extproc/run.sh` installs them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from epp.devstack.envoy import (
    GRACEFUL_CLOSE,
    EnvoyProcess,
    env_without_proxies,
    free_port,
    render_bootstrap,
    set_runtime,
)
from epp.devstack.processes import EppProcess

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")

LUA = """
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
local f = io.open("%s", "rb"); wrk.body = f:read("*a"); f:close()
done = function(summary, latency, requests)
  io.write(string.format('RESULT {"requests": %%d, "errors": %%d, "p50": %%.3f, "p90": %%.3f, "p99": %%.3f}\\n',
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000))
end
"""


@dataclass
class Row:
    config: str
    body_bytes: int
    concurrency: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    server_cpu_us_per_req: float | None
    envoy_cpu_us_per_req: float
    #: what epp's own processing metrics say it spent per stream (its Python, in the live server)
    epp_processing_us_per_req: float | None = None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


PROCESSING = (
    "inference_extension_request_processing_duration_seconds",
    "inference_extension_response_processing_duration_seconds",
)


def processing_seconds(metrics_port: int) -> tuple[float, float]:
    """(Σ seconds, streams) the EPP reports spending in its own request + response processing."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    total, streams = 0.0, 0.0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in (f"{PROCESSING[0]}_sum", f"{PROCESSING[1]}_sum"):
            total += float(value)
        elif name == f"{PROCESSING[0]}_count":
            streams = float(value)
    return total, streams


def start_nginx(ports: list[int], workdir: Path) -> subprocess.Popen[bytes]:
    servers = "\n".join(
        f"server {{ listen 127.0.0.1:{p}; location / {{ default_type application/json; "
        f'return 200 \'{{"object":"text_completion","backend":{p}}}\'; }} }}'
        for p in ports
    )
    config = workdir / "nginx.conf"
    config.write_text(
        f"daemon off; worker_processes 1; pid {workdir}/nginx.pid; error_log {workdir}/error.log;\n"
        f"events {{ worker_connections 4096; }}\n"
        f"http {{ access_log off; client_body_temp_path {workdir}; client_max_body_size 8m; "
        f"keepalive_requests 1000000;\n{servers}\n}}\n"
    )
    process = subprocess.Popen(["nginx", "-c", str(config), "-p", str(workdir)], stderr=subprocess.PIPE)
    time.sleep(0.5)
    if process.poll() is not None:
        raise RuntimeError(f"nginx failed: {process.stderr.read().decode() if process.stderr else ''}")
    return process


def direct_bootstrap(listener: int, admin: int, backends: list[int]) -> dict[str, Any]:
    config = render_bootstrap("envoy", listener, admin, 1)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"]
    hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "backends"
    config["static_resources"]["clusters"] = [
        {
            "name": "backends",
            "type": "STATIC",
            "connect_timeout": "2s",
            "lb_policy": "ROUND_ROBIN",
            "load_assignment": {
                "cluster_name": "backends",
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
                            for p in backends
                        ]
                    }
                ],
            },
        }
    ]
    return config


def run_wrk(port: int, lua: Path, concurrency: int, seconds: float) -> dict[str, float]:
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(int(seconds), 1)}s",
        "-s",
        str(lua),
        f"http://127.0.0.1:{port}/v1/completions",
    ]
    output = subprocess.run(command, capture_output=True, text=True, env=env_without_proxies(), check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    result: dict[str, float] = json.loads(line[7:])
    result["rps"] = result["requests"] / seconds
    return result


def body_of(size: int) -> bytes:
    head = b'{"model":"meta-llama/Llama-3.1-8B-Instruct","max_tokens":16,"prompt":"'
    filler = (b"abcdefghij " * (size // 11 + 1))[: max(size - len(head) - 2, 1)]
    return head + filler + b'"}'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--bodies", default="1024,65536")
    parser.add_argument(
        "--configs", default="direct,bare-fd,epp-fd,bare-buffered,epp-buffered",
        help="SERVER-MODE, SERVER bare|epp|shell, MODE fd|buffered|fdrst (fd with Envoy resetting each stream)",
    )  # fmt: skip
    parser.add_argument("--epp-args", default="", help="extra epp flags, e.g. '--config-file config/default.yaml'")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: run benchmarks/extproc/run.sh (installs wrk and nginx-light)", file=sys.stderr)
            return 2
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    bodies = [int(b) for b in args.bodies.split(",")]
    configs = args.configs.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="epp-bench-"))
    backend_ports = [free_port() for _ in range(4)]
    backends_arg = ",".join(f"127.0.0.1:{p}" for p in backend_ports)
    nginx = start_nginx(backend_ports, workdir)
    bare_port = free_port()
    bare = subprocess.Popen(
        [sys.executable, str(HERE / "bare_server.py"), "--port", str(bare_port), "--backends", backends_arg],
        env=env_without_proxies(),
    )
    epp_flags = ["--endpoints", backends_arg, "--secure-serving=false", "--v", "1", "--tracing=false"]
    epp = EppProcess([*epp_flags, *args.epp_args.split()])
    epp.start()
    assert epp.process is not None
    server_pid = {"bare": bare.pid, "epp": epp.process.pid}
    server_port = {"bare": bare_port, "epp": epp.grpc_port}
    shell: EppProcess | None = None
    if any(name.startswith("shell-") for name in configs):
        shell = EppProcess(epp_flags, launcher=[sys.executable, str(HERE / "epp_shell.py")])
        shell.start()
        assert shell.process is not None
        server_pid["shell"], server_port["shell"] = shell.process.pid, shell.grpc_port
    envoys: dict[str, EnvoyProcess] = {}
    rows: list[Row] = []
    try:
        for name in configs:
            listener, admin = free_port(), free_port()
            if name == "direct":
                config = direct_bootstrap(listener, admin, backend_ports)
            else:
                server, mode = name.split("-")
                # "fdrst": full duplex with Envoy's default stream end (RST_STREAM), not the bootstraps' graceful close
                body_mode = "FULL_DUPLEX_STREAMED" if mode.startswith("fd") else "BUFFERED"
                response_mode = "FULL_DUPLEX_STREAMED" if mode.startswith("fd") else "NONE"
                config = render_bootstrap(
                    "envoy", listener, admin, server_port[server], epp_tls=False,
                    request_body_mode=body_mode, response_body_mode=response_mode,
                )  # fmt: skip
                if mode == "fdrst":
                    set_runtime(config, {GRACEFUL_CLOSE: False})
            envoys[name] = EnvoyProcess(config, concurrency=1)
            envoys[name].start()
        print(f"# ext_proc benchmark — {platform.node()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
        print(f"# wrk -t1, {args.duration:.0f}s per point after {args.warmup:.0f}s warm-up; Envoy --concurrency 1\n")
        print(
            "| body | c | config | req/s | vs direct | vs bare | p50 ms | p99 ms | server CPU µs/req "
            "| epp Python µs/req | errors |"
        )
        print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for size in bodies:
            lua = workdir / f"post-{size}.lua"
            body_file = workdir / f"body-{size}.json"
            body_file.write_bytes(body_of(size))
            lua.write_text(LUA % body_file)
            for concurrency in concurrencies:
                point: dict[str, Row] = {}
                for name in configs:
                    envoy = envoys[name]
                    run_wrk(envoy.listener_port, lua, concurrency, args.warmup)
                    server = None if name == "direct" else name.split("-")[0]
                    assert envoy.process is not None
                    before = (cpu_seconds(server_pid[server]) if server else 0.0, cpu_seconds(envoy.process.pid))
                    spent_before = processing_seconds(epp.metrics_port) if server == "epp" else (0.0, 0.0)
                    result = run_wrk(envoy.listener_port, lua, concurrency, args.duration)
                    after = (cpu_seconds(server_pid[server]) if server else 0.0, cpu_seconds(envoy.process.pid))
                    spent_after = processing_seconds(epp.metrics_port) if server == "epp" else (0.0, 0.0)
                    requests = max(result["requests"], 1)
                    streams = max(spent_after[1] - spent_before[1], 1.0)
                    row = Row(
                        name, size, concurrency, result["rps"], result["p50"], result["p90"], result["p99"],
                        int(result["errors"]), (after[0] - before[0]) / requests * 1e6 if server else None,
                        (after[1] - before[1]) / requests * 1e6,
                        (spent_after[0] - spent_before[0]) / streams * 1e6 if server == "epp" else None,
                    )  # fmt: skip
                    point[name] = row
                    rows.append(row)
                    direct = point.get("direct")
                    bare_row = point.get(f"bare-{name.split('-')[-1]}") if server in ("epp", "shell") else None
                    vs_direct = f"{row.rps / direct.rps:.2f}" if direct and name != "direct" else "-"
                    vs_bare = f"{row.rps / bare_row.rps:.3f}" if bare_row else "-"
                    cpu = f"{row.server_cpu_us_per_req:.0f}" if row.server_cpu_us_per_req is not None else "-"
                    own = f"{row.epp_processing_us_per_req:.0f}" if row.epp_processing_us_per_req is not None else "-"
                    cells = (size, concurrency, name, f"{row.rps:,.0f}", vs_direct, vs_bare, f"{row.p50_ms:.2f}",
                             f"{row.p99_ms:.2f}", cpu, own, row.errors)  # fmt: skip
                    print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
    finally:
        for envoy in envoys.values():
            envoy.stop()
        epp.stop()
        if shell is not None:
            shell.stop()
        bare.terminate()
        nginx.terminate()
        nginx.wait(5)
        bare.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"extproc-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    print(f"\nraw results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
