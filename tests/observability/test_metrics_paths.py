"""The metrics port serves /metrics and answers 404 elsewhere (prometheus_client's server answers any path)."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from epp.observability.server import start_metrics_server

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def test_only_metrics_is_served() -> None:
    registry = CollectorRegistry()
    Counter("probe", "a counter", registry=registry).inc()
    server, thread = start_metrics_server(0, registry)
    port = server.server_port
    try:
        with OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.status == 200
            assert b"probe_total 1.0" in response.read()
        for path in ("/", "/metric", "/debug/anything", "/metrics/x"):
            with pytest.raises(urllib.error.HTTPError) as caught:
                OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=5)
            assert caught.value.code == 404, path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
