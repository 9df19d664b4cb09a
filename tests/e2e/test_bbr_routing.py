"""Body-based routing through real Envoy: one listener, two pools. `epp bbr` copies the body's model into
x-gateway-model-name; the route matching it picks the pool and that pool's EPP; requests are checked at the
model servers that received them."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from epp.devstack.envoy import EnvoyProcess, free_port, render_bbr_bootstrap
from epp.devstack.processes import EppProcess
from tests.e2e.backends import EchoBackends
from tests.e2e.conftest import endpoints_arg
from tests.e2e.http import get, post

pytestmark = pytest.mark.e2e
BBR_COMMAND = [sys.executable, "-m", "epp.cli", "bbr"]


@dataclass
class TwoPools:
    envoy: EnvoyProcess
    bbr: EppProcess
    pool_a: EchoBackends
    pool_b: EchoBackends


@pytest.fixture(scope="module")
def stack() -> Iterator[TwoPools]:
    pool_a, pool_b = EchoBackends([free_port(), free_port()]), EchoBackends([free_port(), free_port()])
    processes: list[EppProcess] = []
    envoy: EnvoyProcess | None = None
    try:
        for pool in (pool_a, pool_b):
            pool.start()
        bbr = EppProcess([], launcher=BBR_COMMAND)
        epp_a = EppProcess(["--endpoints", endpoints_arg(pool_a)])
        epp_b = EppProcess(["--endpoints", endpoints_arg(pool_b)])
        processes = [bbr, epp_a, epp_b]
        for process in processes:
            process.start(wait_serving=False)
        for process in processes:
            process.wait_serving(30)
        ports = {"bbr": bbr.grpc_port, "epp-a": epp_a.grpc_port, "epp-b": epp_b.grpc_port}
        envoy = EnvoyProcess(render_bbr_bootstrap(free_port(), free_port(), ports))
        envoy.start()
        yield TwoPools(envoy, bbr, pool_a, pool_b)
    finally:
        if envoy is not None:
            envoy.stop()
        for process in processes:
            process.stop()
        for pool in (pool_a, pool_b):
            pool.stop()


def test_each_model_reaches_its_own_pool(stack: TwoPools) -> None:
    for pool in (stack.pool_a, stack.pool_b):
        pool.received.clear()
    for i in range(12):
        model = "model-a" if i % 2 == 0 else "model-b"
        raw = json.dumps({"prompt": f"hello {i}", "model": model}, indent=1).encode()
        status, _, body = post(stack.envoy.listener_port, "/v1/completions", raw)
        assert status == 200, body
        assert json.loads(body)["model"] == model
    for pool, model in ((stack.pool_a, "model-a"), (stack.pool_b, "model-b")):
        assert len(pool.received) == 6
        for received in pool.received:
            assert received.headers["x-gateway-model-name"] == model
            # the pool's own EPP picked it: the destination is one of this pool's servers
            assert received.headers["x-gateway-destination-endpoint"] == f"127.0.0.1:{received.port}"
            assert received.port in pool.ports
            assert json.loads(received.body)["model"] == model
    assert b'"prompt": "hello 0"' in stack.pool_a.received[0].body  # forwarded byte for byte


def test_a_model_no_pool_serves_is_404_and_a_spoofed_header_does_not_steer(stack: TwoPools) -> None:
    for pool in (stack.pool_a, stack.pool_b):
        pool.received.clear()
    status, _, body = post(stack.envoy.listener_port, "/v1/completions", {"model": "model-z", "prompt": "p"})
    assert (status, body) == (404, b"no InferencePool serves this model\n")
    spoofed = {"x-gateway-model-name": "model-a"}
    status, _, _ = post(stack.envoy.listener_port, "/v1/completions", {"prompt": "no model"}, headers=spoofed)
    assert status == 404  # the header comes from the body or not at all
    status, _, _ = post(stack.envoy.listener_port, "/v1/completions", {"model": "model-b", "prompt": "p"}, spoofed)
    assert status == 200 and len(stack.pool_b.received) == 1 and stack.pool_a.received == []


def test_outcomes_are_counted(stack: TwoPools) -> None:
    status, page = get(stack.bbr.metrics_port, "/metrics")
    assert status == 200
    counters = {
        line.split()[0]: float(line.split()[1]) for line in page.decode().splitlines() if line.startswith("bbr_")
    }
    assert counters["bbr_success_total"] >= 1 and counters["bbr_model_not_in_body_total"] >= 1
    assert "bbr_model_not_parsed_total" in counters
