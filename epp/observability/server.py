"""The metrics port: Prometheus' exposition on /metrics, the /debug pages, and 404 for every other path.

Paths: `/metrics`; `/debug` (the status page, HTML); `/debug/endpoints`, `/debug/decisions`
(`?limit=N&request_id=ID&candidates=N`) and `/debug/config` (JSON). Every one of them passes the guard
first (`--metrics-endpoint-auth`: Kubernetes TokenReview + SubjectAccessReview on the path, see
epp.k8s.metrics_auth); an unknown path is 404 without it, as the reference's metrics server answers.
With a TLS context (`--metrics-cert-dir`) the port speaks HTTPS; the handshake runs on the request's
thread, so a client that stalls in it holds no one else up.

Served from a daemon thread, off the event loop: the pages are built there when asked.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from epp.observability import status_page
from epp.observability.debug import DebugPages, QueryError

METRICS_PATH = "/metrics"
DEBUG_PATHS = ("/debug", "/debug/", "/debug/endpoints", "/debug/decisions", "/debug/config")
_NOT_FOUND = b"404 page not found\n"
#: seconds a client may take for the TLS handshake or to send its request
CLIENT_TIMEOUT_S = 10.0

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True)
class Denial:
    """Why a request to the metrics port is refused: an HTTP status line and a one-line message."""

    status: str
    message: str


class Guard(Protocol):
    def check(self, authorization: str, path: str, verb: str) -> Denial | None:
        """None when the holder of `authorization` (the Authorization header, "" if none) may `verb` `path`."""
        ...


class _Handler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT_S

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingWSGIServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away or failed its TLS handshake is its own business


def _plain(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [text.encode() + b"\n"]


def metrics_app(registry: CollectorRegistry, debug: DebugPages | None = None, guard: Guard | None = None) -> WsgiApp:
    exposition = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path != METRICS_PATH and (debug is None or path not in DEBUG_PATHS):
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [_NOT_FOUND]
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _plain(start_response, "405 Method Not Allowed", f"{method} is not served on {path}; use GET")
        if guard is not None:
            denial = guard.check(environ.get("HTTP_AUTHORIZATION", ""), path, "get")
            if denial is not None:
                return _plain(start_response, denial.status, denial.message)
        if path == METRICS_PATH:
            result: Iterable[bytes] = exposition(environ, start_response)
            return result
        assert debug is not None
        query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
        try:
            if path in ("/debug", "/debug/"):
                return _html(start_response, debug, query)
            if path == "/debug/endpoints":
                document = debug.endpoints()
            elif path == "/debug/decisions":
                document = debug.decisions_page(query)
            else:
                document = debug.config_page()
        except QueryError as exc:
            return _plain(start_response, "400 Bad Request", str(exc))
        body = orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=str)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


def _html(start_response: StartResponse, debug: DebugPages, query: dict[str, str]) -> list[bytes]:
    refresh = 0 if query.get("refresh") in ("0", "off", "false") else 5
    decisions = debug.decisions_page({"limit": str(status_page.PAGE_DECISIONS)})
    page = status_page.render(debug.info(), debug.endpoints(), decisions, refresh).encode()
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(page)))])
    return [page]


def server_tls_context(cert_dir: str, client_ca_file: str = "") -> ssl.SSLContext:
    """TLS for the metrics port from `cert_dir`/tls.crt and tls.key (as the reference's --metrics-cert-dir);
    with `client_ca_file`, clients must present a certificate it signed. Raises OSError/ValueError naming
    what is wrong."""
    directory = Path(cert_dir)
    cert, key = directory / "tls.crt", directory / "tls.key"
    missing = [str(p) for p in (cert, key) if not p.is_file()]
    if missing:
        raise ValueError(f"--metrics-cert-dir {cert_dir}: missing {', '.join(missing)} (PEM certificate and key)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise ValueError(f"--metrics-cert-dir {cert_dir}: tls.crt and tls.key do not load: {exc}") from None
    if client_ca_file:
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"--metrics-client-ca-file {client_ca_file}: cannot load it: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def start_metrics_server(
    port: int,
    registry: CollectorRegistry,
    debug: DebugPages | None = None,
    guard: Guard | None = None,
    tls: ssl.SSLContext | None = None,
) -> tuple[WSGIServer, threading.Thread]:
    """Serve on `port` (all IPv4 addresses) from a daemon thread; 0 picks a free port."""
    server = make_server("0.0.0.0", port, metrics_app(registry, debug, guard), _Server, handler_class=_Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server, thread
