"""deploy/envoy/envoy.yaml's observing filter through real Envoy and a simulated vLLM: a streamed response's first
chunk and usage reach epp's metrics, and a client that hangs up mid-stream has its pick released."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from epp.devstack.envoy import EnvoyProcess, env_without_proxies, free_port, free_port_range, render_bootstrap
from epp.devstack.lifecycle import stop_process
from epp.devstack.processes import EppProcess

pytestmark = pytest.mark.e2e
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def metric(epp: EppProcess, name: str) -> float:
    """The sum of a metric family's samples on epp's /metrics (0 when it has none yet)."""
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
        f"http://127.0.0.1:{epp.metrics_port}/metrics", timeout=5
    ) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


def wait_for(epp: EppProcess, name: str, expected: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    value = metric(epp, name)
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        value = metric(epp, name)
    return value


def open_stream(port: int, max_tokens: int) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = {"model": MODEL, "prompt": "Tell me a long story.", "max_tokens": max_tokens, "stream": True}
    body["stream_options"] = {"include_usage": True}
    connection.request("POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    return connection, response


def test_observed_streams_are_counted_and_a_hang_up_releases_the_pick() -> None:
    port = free_port_range(1)
    fleet = subprocess.Popen(
        [sys.executable, "-m", "vllmsim.cli", "--port", str(port), "--count", "1", "--stream-interval", "1"],
        env=env_without_proxies(),
    )
    epp = EppProcess(["--endpoints", f"127.0.0.1:{port}", "--tracing=false"])
    running = "inference_objective_running_requests"
    try:
        time.sleep(1.0)
        epp.start()
        with EnvoyProcess(render_bootstrap("envoy", free_port(), free_port(), epp.grpc_port)) as envoy:
            connection, response = open_stream(envoy.listener_port, 8)
            text = response.read().decode()
            connection.close()
            assert text.rstrip().endswith("data: [DONE]")
            assert wait_for(epp, "inference_objective_output_tokens_sum", 8, 5) == 8  # the usage chunk, observed
            assert wait_for(epp, "inference_objective_request_ttft_seconds_count", 1, 5) == 1
            assert wait_for(epp, running, 0, 5) == 0

            connection, response = open_stream(envoy.listener_port, 2000)  # tens of seconds of tokens
            assert response.readline().startswith(b"data: ")
            assert metric(epp, running) == 1  # held by the observing stream while tokens flow
            connection.close()  # the client hangs up mid-stream
            started = time.monotonic()
            assert wait_for(epp, running, 0, 10) == 0
            # Envoy ends the observing stream at most its deferred_close_timeout (1 s) after the request
            assert time.monotonic() - started < 5
    finally:
        epp.stop()
        stop_process(fleet)
