"""Issue 3 end to end: requests sharing a long system prompt land on the same simulated server while load
is even, and spread when that server's load grows (its waiting queue and KV usage, as scraped). With the
default weights (queue 2, KV 2, prefix 3) a longer queue alone does not outweigh a full prefix match; a
queue plus a nearly full KV cache does: 2·0 + 2·0.05 + 3·0.98 ≈ 3.0 at home against 2 + 2 + 0 = 4."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest

from epp.devstack.envoy import EnvoyProcess, env_without_proxies, free_port, free_port_range, render_bootstrap
from epp.devstack.processes import EppProcess
from tests.e2e.http import post

pytestmark = pytest.mark.e2e
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def served_by(port: int, prompt: str, max_tokens: int = 4) -> str:
    status, headers, body = post(port, "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens})
    assert status == 200, body
    return headers["x-vllm-sim-port"]


def test_shared_prefix_sticks_then_spreads_under_load() -> None:
    base = free_port_range(3)
    fleet = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllmsim.cli",
            "--port",
            str(base),
            "--count",
            "3",
            "--time-scale",
            "5",
            "--max-num-seqs",
            "2",
            "--num-gpu-blocks",
            "2000",
        ],
        env=env_without_proxies(),
    )
    epp = EppProcess(
        [
            "--endpoints",
            ",".join(f"127.0.0.1:{base + i}" for i in range(3)),
            "--tracing=false",
            "--refresh-metrics-interval",
            "50ms",
        ]
    )
    try:
        time.sleep(1.0)
        epp.start()
        with EnvoyProcess(render_bootstrap("envoy", free_port(), free_port(), epp.grpc_port)) as envoy:
            system = "You are a support assistant for the inference gateway; be precise and brief. " * 30
            homes = {served_by(envoy.listener_port, f"{system}Question {i}?") for i in range(6)}
            assert len(homes) == 1, homes  # even load: the prefix keeps them together
            home = int(homes.pop())
            # Load the home server directly (not through the EPP): long requests fill its batch and queue.
            hog = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    (
                        "import json, urllib.request, concurrent.futures as f\n"
                        f"req = lambda i: urllib.request.build_opener(urllib.request.ProxyHandler({{}})).open("
                        f"urllib.request.Request('http://127.0.0.1:{home}/v1/completions', data=json.dumps("
                        f"{{'model': '{MODEL}', 'prompt': str(i) + 'z' * 60000, 'max_tokens': 400}}).encode(), "
                        "headers={'content-type': 'application/json'}), timeout=60).read()\n"
                        "list(f.ThreadPoolExecutor(12).map(req, range(12)))\n"
                    ),
                ],
                env=env_without_proxies(),
            )
            try:
                deadline = time.monotonic() + 10
                while True:  # wait until the EPP's scrape shows the queue
                    page = (
                        urllib.request.build_opener(urllib.request.ProxyHandler({}))
                        .open(f"http://127.0.0.1:{home}/metrics", timeout=2)
                        .read()
                        .decode()
                    )
                    waiting = next(
                        float(line.rsplit(" ", 1)[1])
                        for line in page.splitlines()
                        if line.startswith("vllm:num_requests_waiting{")
                    )
                    if waiting >= 5 or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                time.sleep(0.3)
                spread = [int(served_by(envoy.listener_port, f"{system}Later question {i}?")) for i in range(4)]
                assert home not in spread, (home, spread)
            finally:
                hog.kill()
    finally:
        epp.stop()
        fleet.terminate()
        fleet.wait(10)
