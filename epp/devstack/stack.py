"""The local stack: real Envoy + simulated vLLM servers + epp (standalone), a routed burst, then a curl line.

`python -m epp.devstack.stack [--servers 3] [--requests 12] [--replicas 1] [--exit]`

With `--replicas N` (N > 1) it also starts a redis-server, runs N epp replicas sharing state through it
(`--shared-state`), one Envoy per replica (so the burst can show which replica routed each request) and the
main listener's Envoy spreading streams over all of them (deploy/envoy/envoy-replicas.yaml).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

from epp.devstack.envoy import EnvoyProcess, env_without_proxies, free_port, free_port_range, render_bootstrap
from epp.devstack.needs import missing
from epp.devstack.processes import EppProcess
from epp.devstack.redis import RedisServer

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def start_simulators(count: int, base_port: int, time_scale: float) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "vllmsim.cli",
        "--model",
        MODEL,
        "--port",
        str(base_port),
        "--count",
        str(count),
        "--time-scale",
        str(time_scale),
    ]
    process = subprocess.Popen(command, env=env_without_proxies(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    pending = set(range(base_port, base_port + count))
    while pending and time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vllm-sim exited: {process.stderr.read().decode() if process.stderr else ''}")
        for port in list(pending):
            try:
                with _OPENER.open(f"http://127.0.0.1:{port}/health", timeout=1):
                    pending.discard(port)
            except OSError:
                pass
        time.sleep(0.1)
    if pending:
        process.kill()
        raise TimeoutError(f"simulated servers on ports {sorted(pending)} did not come up")
    return process


def complete(port: int, prompt: str) -> tuple[int, dict[str, Any], str]:
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 8}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions", data=body, headers={"content-type": "application/json"}
    )
    try:
        with _OPENER.open(request, timeout=30) as response:
            return response.status, json.load(response), response.headers.get("x-vllm-sim-port", "?")
    except urllib.error.HTTPError as error:
        return error.code, {"error": error.read().decode()}, "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--time-scale", type=float, default=10.0, help="simulator speed-up over real time")
    parser.add_argument("--listener-port", type=int, default=8081)
    parser.add_argument(
        "--replicas", type=int, default=1, help="epp replicas sharing state through a local redis-server (1: none)"
    )
    parser.add_argument("--exit", action="store_true", help="stop everything after the burst")
    args = parser.parse_args(argv)
    problems = missing()
    if problems:
        print("the local stack needs:\n" + "".join(f"  - {p}\n" for p in problems), file=sys.stderr, end="")
        return 2

    if args.replicas < 1:
        parser.error("--replicas must be 1 or more")
    base_port = free_port_range(args.servers)
    print(f"starting {args.servers} simulated vLLM servers on 127.0.0.1:{base_port}..", flush=True)
    simulators = start_simulators(args.servers, base_port, args.time_scale)
    endpoints = ",".join(f"127.0.0.1:{base_port + i}" for i in range(args.servers))
    store: RedisServer | None = None
    # a stack on this machine: the metrics port and /debug need no token (there is no Kubernetes API to ask)
    flags = ["--endpoints", endpoints, "--v", "2", "--metrics-endpoint-auth=false"]
    replicas: list[EppProcess] = []
    envoys: list[EnvoyProcess] = []
    try:
        if args.replicas > 1:
            store = RedisServer()
            store.start()
            print(f"redis-server on 127.0.0.1:{store.port}: replicas share state through it", flush=True)
            flags += ["--shared-state", store.url, "--health-checking"]
        replicas = [EppProcess(flags, env={"POD_NAME": f"epp-{i}"}) for i in range(args.replicas)]
        for i, epp in enumerate(replicas):
            epp.start()
            print(
                f"epp{f' replica {i}' if args.replicas > 1 else ''} serving ext_proc on :{epp.grpc_port} (TLS), "
                f"health :{epp.health_port}, metrics http://127.0.0.1:{epp.metrics_port}/metrics, "
                f"status page http://127.0.0.1:{epp.metrics_port}/debug",
                flush=True,
            )
        if args.replicas > 1:
            ports = [epp.grpc_port for epp in replicas]
            config = render_bootstrap("envoy-replicas", args.listener_port, free_port(), 0, epp_ports=ports)
            envoys.append(EnvoyProcess(config))
            for epp in replicas:  # one listener per replica, so the burst shows who routed what
                envoys.append(EnvoyProcess(render_bootstrap("envoy", free_port(), free_port(), epp.grpc_port)))
        else:
            envoys.append(
                EnvoyProcess(render_bootstrap("envoy", args.listener_port, free_port(), replicas[0].grpc_port))
            )
        for envoy in envoys:
            envoy.start()
        print(f"envoy listening on :{args.listener_port} (admin :{envoys[0].admin_port})", flush=True)
        for i, envoy in enumerate(envoys[1:]):
            print(f"envoy of replica {i} only on :{envoy.listener_port}", flush=True)
        print(flush=True)
        # Three tenants, each with its own long system prompt: the built-in default (predicted TTFT) keeps each
        # tenant on the server that holds its prefix while that server is not the slower choice.
        systems = [
            f"You are assistant {t} for tenant {t}; answer questions about inference routing. " * 4 for t in "ABC"
        ]
        hits: Counter[str] = Counter()
        # With replicas, consecutive requests of a tenant go through different replicas: the second replica sends
        # a tenant where the first one did, because what one replica learns the others know within milliseconds.
        routes = envoys[1:] or envoys
        for i in range(args.requests):
            prompt = f"{systems[i % 3]}Question {i}: which endpoint serves this request?"
            replica = (i // 3) % len(routes)
            status, document, served = complete(routes[replica].listener_port, prompt)
            usage = document.get("usage", {})
            via = f" via replica {replica}" if args.replicas > 1 else ""
            print(
                f"request {i + 1:2d} (tenant {'ABC'[i % 3]}){via} → HTTP {status}, served by 127.0.0.1:{served}, "
                f"prompt_tokens={usage.get('prompt_tokens')}, cached={_cached(usage)}",
                flush=True,
            )
            hits[served] += 1
            time.sleep(0.05 if args.replicas > 1 else 0.0)
        print(f"\nper server: {dict(sorted(hits.items()))}")
        curl = (
            f"curl -s http://127.0.0.1:{args.listener_port}/v1/completions -H 'content-type: application/json' "
            f'-d \'{{"model":"{MODEL}","prompt":"Hello","max_tokens":8}}\''
        )
        print(f"\ntry it:\n  {curl}\n")
        if args.exit:
            return 0 if sum(hits.values()) == args.requests and "-" not in hits else 1
        print("stack is up; Ctrl-C stops it", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
    finally:
        for envoy in envoys:
            envoy.stop()
        for epp in replicas:
            epp.stop()
        if store is not None:
            store.close()
        simulators.terminate()
        simulators.wait(10)


def _cached(usage: dict[str, Any]) -> Any:
    details = usage.get("prompt_tokens_details") or {}
    return details.get("cached_tokens", 0)


if __name__ == "__main__":
    raise SystemExit(main())
