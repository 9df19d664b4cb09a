"""Why this endpoint, end to end: a real epp process behind real Envoy, echo servers as the pool.

- `--emit-endpoint-scores`: Envoy accepts the `envoy.lb` metadata (metadata_options.receiving_namespaces, as a
  gateway that reads it must) and the route copies `x-gateway-destination-endpoint-scores` into a request
  header, so each server sees the scores Envoy received; they must be the totals /debug/decisions shows for
  that request id, and the server the request reached must be the decision's destination.
- the status page (`/debug`) in headless Chromium: the DOM names every endpoint and the recent decisions;
  a screenshot is taken (docs/status-page.png is made the same way by scripts/status-page-screenshot.py).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from epp.devstack.envoy import EnvoyProcess, free_port, render_bootstrap
from epp.devstack.processes import EppProcess
from tests.e2e.backends import EchoBackends
from tests.e2e.conftest import endpoints_arg
from tests.e2e.http import get, post
from tests.system_packages import PackageMissing, PackageNotInstallable, ensure_debian_package

pytestmark = pytest.mark.e2e
SCORES_ECHO = "x-test-endpoint-scores"


def envoy_echoing_scores(epp_port: int) -> dict[str, Any]:
    config = render_bootstrap("envoy", free_port(), free_port(), epp_port)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    ext_proc = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_proc")["typed_config"]
    ext_proc["metadata_options"] = {"receiving_namespaces": {"untyped": ["envoy.lb"]}}
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
    metadata = "%DYNAMIC_METADATA(envoy.lb:x-gateway-destination-endpoint-scores)%"
    route["request_headers_to_add"] = [{"header": {"key": SCORES_ECHO, "value": metadata}}]
    return config


def chromium() -> str:
    try:
        [binary] = ensure_debian_package(
            "chromium", ["chromium|chromium-browser"], "install Chromium and put it on PATH"
        )
    except PackageNotInstallable as exc:  # a user without root: skip, naming the command (never silently)
        pytest.skip(str(exc))
    except PackageMissing as exc:
        pytest.fail(str(exc))
    return binary


def headless(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--hide-scrollbars", *args],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


#: the flags of the epp whose scores reach Envoy
SCORING_FLAGS = ["--emit-endpoint-scores", "--metrics-endpoint-auth=false"]


@pytest.fixture(scope="module")
def scoring_epp(backends: EchoBackends) -> Iterator[EppProcess]:
    process = EppProcess(["--endpoints", endpoints_arg(backends), *SCORING_FLAGS])
    process.start()
    yield process
    process.stop()


def test_endpoint_scores_reach_envoy_and_match_debug_decisions(backends: EchoBackends, scoring_epp: EppProcess) -> None:
    seen: dict[str, tuple[dict[str, float], str, int]] = {}
    with EnvoyProcess(envoy_echoing_scores(scoring_epp.grpc_port)) as envoy:
        for i in range(12):
            backends.received.clear()
            prompt = f"tenant {i % 3}: " + "a long shared system prompt. " * 30 + f"question {i}"
            status, _, body = post(
                envoy.listener_port, "/v1/completions", {"model": "m", "prompt": prompt}, {"x-request-id": f"s-{i}"}
            )
            assert status == 200, body
            [received] = backends.received
            seen[f"s-{i}"] = (
                json.loads(received.headers[SCORES_ECHO]),
                received.headers["x-gateway-destination-endpoint"],
                received.port,
            )
    status, body = get(scoring_epp.metrics_port, "/debug/decisions?candidates=all")
    assert status == 200
    decisions = {d["request_id"]: d for d in json.loads(body)["decisions"]}
    for request_id, (scores, destination, port) in seen.items():
        decision = decisions[request_id]
        profile = decision["profiles"][decision["primary_profile"]]
        assert scores == {c["endpoint"]: c["total"] for c in profile["candidates"]}
        assert len(scores) == 3, "every scored candidate, not only the one picked"
        assert decision["destination"] == destination == f"127.0.0.1:{port}", "the request went where it was decided"
        assert scores[destination] == max(scores.values())


def test_endpoint_scores_are_absent_by_default(backends: EchoBackends, epp: EppProcess) -> None:
    backends.received.clear()
    with EnvoyProcess(envoy_echoing_scores(epp.grpc_port)) as envoy:
        status, _, body = post(envoy.listener_port, "/v1/completions", {"model": "m", "prompt": "hello"})
    assert status == 200, body
    assert backends.received[-1].headers.get(SCORES_ECHO, "") == ""
    assert "x-gateway-destination-endpoint" in backends.received[-1].headers
    # standalone with --metrics-endpoint-auth at its default: said at start-up, not silently ignored
    assert "/metrics and /debug are served to anyone who reaches port" in epp.log()


def test_status_page_in_headless_chromium(backends: EchoBackends, scoring_epp: EppProcess, tmp_path: Path) -> None:
    binary = chromium()
    with EnvoyProcess(envoy_echoing_scores(scoring_epp.grpc_port)) as envoy:
        for i in range(4):
            status, _, _ = post(
                envoy.listener_port,
                "/v1/completions",
                {"model": "m", "prompt": f"page {i}"},
                {"x-request-id": f"p-{i}"},
            )
            assert status == 200
    url = f"http://127.0.0.1:{scoring_epp.metrics_port}/debug?refresh=0"
    dom = headless(binary, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "epp — endpoint picker status" in dom.stdout
    for port in backends.ports:
        assert f"127.0.0.1:{port}" in dom.stdout
    assert "p-3" in dom.stdout and "Recent decisions" in dom.stdout
    shot = tmp_path / "status.png"
    taken = headless(binary, f"--screenshot={shot}", "--window-size=1280,800", url)
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") == 1280
    assert len(data) > 20_000, "a rendered page, not a blank one"
