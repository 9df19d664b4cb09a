"""Issue 6 end to end: with `featureGates: [flowControl]`, requests wait while the simulated fleet is
saturated (queue ≥ queueDepthThreshold on every server) instead of being sent to it, are rejected with 429
when the queue is at maxRequests, with 503 when their TTL passes, and are dispatched as soon as the load
falls — all through real Envoy, with the queue visible in the flow-control metrics."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from epp.devstack.envoy import EnvoyProcess, env_without_proxies, free_port, free_port_range, render_bootstrap
from epp.devstack.processes import EppProcess
from tests.e2e import hog
from tests.e2e.http import get, post

pytestmark = pytest.mark.e2e
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: queue-scorer
- type: round-robin-fairness-policy
  name: fair
flowControl:
  maxRequests: 2
  defaultRequestTTL: 2s
  defaultPriorityBand: {fairnessPolicyRef: fair}
"""


def metric(port: int, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`, from a live scrape."""
    status, page = get(port, "/metrics")
    assert status == 200
    return sum(
        sample.value
        for family in text_string_to_metric_families(page.decode())
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def complete(port: int, tenant: str) -> tuple[int, float]:
    started = time.monotonic()
    status, _, _ = post(
        port,
        "/v1/completions",
        {"model": MODEL, "prompt": f"question from {tenant}", "max_tokens": 2},
        headers={"x-gateway-inference-fairness-id": tenant},
        timeout=30,
    )
    return status, time.monotonic() - started


def test_requests_wait_while_saturated_and_dispatch_when_load_falls(tmp_path: Path) -> None:
    base = free_port_range(2)
    fleet = subprocess.Popen(
        [sys.executable, "-m", "vllmsim.cli", "--port", str(base), "--count", "2", "--max-num-seqs", "1"],
        env=env_without_proxies(),
    )
    config = tmp_path / "flow.yaml"
    config.write_text(CONFIG)
    epp = EppProcess(
        ["--endpoints", f"127.0.0.1:{base},127.0.0.1:{base + 1}", "--config-file", str(config),
         "--tracing=false", "--refresh-metrics-interval", "50ms"]
    )  # fmt: skip
    load: subprocess.Popen[bytes] | None = None
    pool = concurrent.futures.ThreadPoolExecutor(4)
    try:
        time.sleep(1.0)
        epp.start()
        with EnvoyProcess(render_bootstrap("envoy", free_port(), free_port(), epp.grpc_port)) as envoy:
            listener = envoy.listener_port
            assert complete(listener, "warmup")[0] == 200  # not saturated: straight through
            load = hog.start(MODEL, [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"])
            saturation = "inference_extension_flow_control_pool_saturation"
            wait_for(lambda: metric(epp.metrics_port, saturation) >= 1.0, 10, "the pool to saturate")

            # TTL: nothing frees up within 2 s → 503
            status, elapsed = complete(listener, "ttl")
            assert status == 503 and 1.8 <= elapsed < 6, (status, elapsed)

            # capacity: two wait, the third is rejected at once
            waiting = [pool.submit(complete, listener, tenant) for tenant in ("a", "b")]
            queued = "inference_extension_flow_control_queue_size"
            wait_for(lambda: metric(epp.metrics_port, queued) == 2, 5, "two queued requests")
            status, elapsed = complete(listener, "c")
            assert status == 429 and elapsed < 1.0, (status, elapsed)

            # load falls (the hog goes away, the servers abort its requests) → both dispatch promptly
            time.sleep(0.5)
            load.kill()
            load.wait()
            released = time.monotonic()
            for future in waiting:
                status, _ = future.result(timeout=20)
                assert status == 200
            assert time.monotonic() - released < 3.0
            assert metric(epp.metrics_port, queued) == 0

            durations = "inference_extension_flow_control_request_queue_duration_seconds_count"
            for tenant, outcome in (("a", "Dispatched"), ("c", "RejectedCapacity"), ("ttl", "EvictedTTL")):
                assert metric(epp.metrics_port, durations, fairness_id=tenant, outcome=outcome) == 1, (tenant, outcome)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if load is not None and load.poll() is None:
            load.kill()
        epp.stop()
        fleet.terminate()
        fleet.wait(10)
