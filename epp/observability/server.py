"""The metrics port: Prometheus' exposition on /metrics, and 404 for every other path (as the reference's
metrics server; prometheus_client's own server answers any path with the metrics page)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

METRICS_PATH = "/metrics"
_NOT_FOUND = b"404 page not found\n"

StartResponse = Callable[..., Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def metrics_app(registry: CollectorRegistry) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    exposition = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [_NOT_FOUND]
        result: Iterable[bytes] = exposition(environ, start_response)
        return result

    return app


def start_metrics_server(port: int, registry: CollectorRegistry) -> tuple[WSGIServer, threading.Thread]:
    """Serve the registry on `port` (all IPv4 addresses, as before) from a daemon thread; 0 picks a free port."""

    server = make_server("0.0.0.0", port, metrics_app(registry), ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server, thread
