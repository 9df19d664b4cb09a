"""Through real Envoy: ext_proc full duplex over TLS to a real epp process, ORIGINAL_DST to echo servers."""

from __future__ import annotations

import json
import time

import pytest

from epp.devstack.envoy import EnvoyProcess, free_port, render_bootstrap
from epp.devstack.processes import EppProcess
from tests.e2e.backends import EchoBackends
from tests.e2e.conftest import endpoints_arg
from tests.e2e.http import post

pytestmark = pytest.mark.e2e


def test_request_reaches_the_endpoint_the_epp_chose(backends: EchoBackends, envoy: EnvoyProcess) -> None:
    backends.received.clear()
    for i in range(30):
        status, headers, body = post(envoy.listener_port, "/v1/completions", {"model": "m", "prompt": f"hello {i}"})
        assert status == 200, body
        assert int(headers["x-backend-port"]) == json.loads(body)["backend"]
    assert len(backends.received) == 30
    for received in backends.received:
        # checked at the server: the request landed where the EPP's header pointed
        assert received.headers["x-gateway-destination-endpoint"] == f"127.0.0.1:{received.port}"
        assert json.loads(received.body)["prompt"].startswith("hello ")
    # idle servers tie on every default scorer, so the random tie-break spreads sequential requests over
    # all three (the chance one server gets none of 30 is 3 * (2/3)**30, about 2e-5)
    assert set(backends.ports_hit()) == set(backends.ports)


def test_body_is_forwarded_byte_for_byte(backends: EchoBackends, envoy: EnvoyProcess) -> None:
    backends.received.clear()
    raw = b'{ "prompt" : "spaces   kept",\n "model":"m", "temperature": 1.0, "n": 12345678901234567}'
    status, _, _ = post(envoy.listener_port, "/v1/completions", raw)
    assert status == 200
    assert backends.received[-1].body == raw


def test_large_body_crosses_chunk_limits(backends: EchoBackends, envoy: EnvoyProcess) -> None:
    backends.received.clear()
    body = json.dumps({"model": "m", "prompt": "x" * 200_000}).encode()
    status, _, _ = post(envoy.listener_port, "/v1/completions", body)
    assert status == 200
    assert backends.received[-1].body == body


def test_errors_are_immediate_responses(envoy: EnvoyProcess) -> None:
    status, _, body = post(envoy.listener_port, "/v1/completions", {"prompt": "hello world"})
    assert (status, body) == (400, b"inference error: BadRequest - model not found in request body")
    status, _, body = post(envoy.listener_port, "/v1/completions", b"no healthy upstream")
    assert status == 400 and body.startswith(b"inference error: BadRequest - error unmarshaling request bodyMap")


def test_model_rewrite_header_reaches_server_and_client_sees_its_own_name(
    backends: EchoBackends, envoy: EnvoyProcess
) -> None:
    backends.received.clear()
    headers = {"x-gateway-model-name-rewrite": "m-canary"}
    status, _, body = post(envoy.listener_port, "/v1/completions", {"model": "m", "prompt": "p"}, headers)
    assert status == 200
    assert json.loads(backends.received[-1].body)["model"] == "m-canary"
    assert json.loads(body)["model"] == "m"


def test_streamed_response_passes_through(backends: EchoBackends, envoy: EnvoyProcess) -> None:
    status, headers, body = post(envoy.listener_port, "/v1/completions", {"model": "m", "prompt": "p", "stream": True})
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = [line for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]" and len(events) == 5


def test_buffered_mode(backends: EchoBackends, epp: EppProcess) -> None:
    config = render_bootstrap(
        "envoy", free_port(), free_port(), epp.grpc_port, request_body_mode="BUFFERED", response_body_mode="NONE"
    )
    with EnvoyProcess(config) as envoy:
        backends.received.clear()
        for i in range(3):
            status, _, body = post(envoy.listener_port, "/v1/completions", {"model": "m", "prompt": f"b{i}"})
            assert status == 200, body
        for received in backends.received:
            assert received.headers["x-gateway-destination-endpoint"] == f"127.0.0.1:{received.port}"


def test_epp_down_fails_closed_but_fail_open_still_serves(backends: EchoBackends) -> None:
    epp = EppProcess(["--endpoints", endpoints_arg(backends)])
    epp.start()
    closed = EnvoyProcess(render_bootstrap("envoy", free_port(), free_port(), epp.grpc_port))
    opened = EnvoyProcess(
        render_bootstrap("envoy-fail-open", free_port(), free_port(), epp.grpc_port, pool_ports=backends.ports)
    )
    closed.start()
    opened.start()
    try:
        assert post(closed.listener_port, "/v1/completions", {"model": "m", "prompt": "p"})[0] == 200
        assert post(opened.listener_port, "/v1/completions", {"model": "m", "prompt": "p"})[0] == 200
        epp.stop()
        status, _, _ = post(closed.listener_port, "/v1/completions", {"model": "m", "prompt": "p"})
        assert status >= 500
        backends.received.clear()
        status, _, _ = post(opened.listener_port, "/v1/completions", {"model": "m", "prompt": "p"})
        assert status == 200
        assert "x-gateway-destination-endpoint" not in backends.received[-1].headers
    finally:
        closed.stop()
        opened.stop()
        epp.stop()


def _streams_after_twelve_requests(envoy: EnvoyProcess, expected: int) -> tuple[int, int]:
    """(ext_proc streams ended with epp's status, streams Envoy reset) over 10 requests, a streamed one and a 400."""
    before = envoy.stats("cluster.epp.upstream_rq_")
    for i in range(10):
        assert post(envoy.listener_port, "/v1/completions", {"model": "m", "prompt": f"p{i}"})[0] == 200
    assert post(envoy.listener_port, "/v1/completions", {"model": "m", "prompt": "s", "stream": True})[0] == 200
    assert post(envoy.listener_port, "/v1/completions", {"prompt": "no model"})[0] == 400
    deadline = time.monotonic() + 5
    while True:
        after = envoy.stats("cluster.epp.upstream_rq_")
        done = after["cluster.epp.upstream_rq_completed"] - before.get("cluster.epp.upstream_rq_completed", 0)
        if done >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return done, after["cluster.epp.upstream_rq_tx_reset"] - before.get("cluster.epp.upstream_rq_tx_reset", 0)


def test_envoy_closes_every_ext_proc_stream_without_a_reset(backends: EchoBackends, epp: EppProcess) -> None:
    """The reference layout's graceful close: Envoy half-closes and takes epp's OK status instead of resetting the
    stream (a reset makes grpcio's asyncio server leak each failed batch's native memory)."""
    config = render_bootstrap(
        "envoy", free_port(), free_port(), epp.grpc_port, response_body_mode="FULL_DUPLEX_STREAMED"
    )
    with EnvoyProcess(config) as envoy:
        assert _streams_after_twelve_requests(envoy, 12) == (12, 0), "every stream ended with epp's status"


def test_observing_streams_end_with_epps_status(envoy: EnvoyProcess) -> None:
    """deploy/envoy/envoy.yaml opens two streams per request, the routing filter's and the observing filter's (the
    400's too: its local reply crosses the observer). Every one ends with epp's status; Envoy resets an observing
    stream only after that status (observability mode never half-closes), when epp reads nothing more."""
    done, resets = _streams_after_twelve_requests(envoy, 24)
    assert done == 24, "every stream ended with epp's status"
    assert resets <= 12, "only observing streams are reset"
