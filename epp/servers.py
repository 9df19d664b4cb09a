"""Ports every ext_proc server here opens (`epp` and `epp bbr`): the ext_proc gRPC port with the reference's
TLS flags, and the gRPC health port; a port that cannot be bound stops startup with a message naming its flag.
Before serving, the soft limit of open files is raised to the hard one."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import uvloop

from epp import tls
from epp.flags import log_options
from epp.health import HealthState, add_health
from epp.observability import logging as epp_logging
from epp.settings import ServingSettings

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S", bound=ServingSettings)


class StartupError(Exception):
    pass


def raise_open_files_limit() -> int:
    """Lift the soft limit of open files to the hard one, as the Go runtime does for the reference EPP; the new
    soft limit. A login shell's soft limit is often 1,024, which a pool of that many scraped endpoints or as
    many client connections exhausts (each holds a descriptor), while the hard limit allows far more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20  # the kernel's usual nr_open
    if soft == hard or (soft != resource.RLIM_INFINITY and soft >= target):
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # nr_open can be below an unlimited hard limit
        return soft
    return target


def bind(flag: str, port: int, opener: Callable[[], T]) -> T:
    try:
        return opener()
    except (OSError, RuntimeError) as exc:  # grpc raises RuntimeError("Failed to bind ...")
        raise StartupError(
            f"{flag} {port}: cannot listen there ({exc}); another process holds the port: stop it or pick another"
        ) from None


#: calls gRPC core may hold before the Python server takes them. Every request through the proxy is one
#: ext_proc stream, and a burst of them (thousands of slow clients opening at once) arrives faster than the
#: event loop takes them: past gRPC's defaults (1,000 soft, 3,000 hard) core ends the newest streams with
#: "Too many pending requests for this server", and Envoy answers 500 to requests that had done nothing wrong
#: (tests/unit/test_extproc_burst.py: 1,441 of 4,000 with the defaults). Bounded as the shipped bootstraps
#: bound the epp cluster's requests (100,000); a call not taken within gRPC's 30 s is still refused.
MAX_PENDING_STREAMS = 100_000


def extproc_server(settings: ServingSettings) -> grpc.aio.Server:
    """The ext_proc gRPC server (not bound yet): message size limits from the flags, pending calls held."""
    return grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.grpc_max_recv_msg_size),
            ("grpc.max_send_message_length", settings.grpc_max_send_msg_size),
            ("grpc.server.max_pending_requests", MAX_PENDING_STREAMS),
            ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_STREAMS),
        ]
    )


def add_extproc_port(server: grpc.aio.Server, settings: ServingSettings) -> int:
    """Bind --grpc-port: TLS unless --secure-serving=false (--cert-path, --enable-cert-reload); the bound port."""
    address = f"[::]:{settings.grpc_port}"
    if not settings.secure_serving:
        return bind("--grpc-port", settings.grpc_port, lambda: server.add_insecure_port(address))
    try:
        credentials = tls.server_credentials(settings.cert_path, settings.enable_cert_reload)
    except (OSError, ValueError) as exc:
        raise StartupError(str(exc)) from None
    return bind("--grpc-port", settings.grpc_port, lambda: server.add_secure_port(address, credentials))


def health_server(settings: ServingSettings, health: HealthState) -> tuple[grpc.aio.Server, int]:
    """The gRPC health service on --grpc-health-port (not started yet); the bound port."""
    server = grpc.aio.server()
    add_health(server, health)
    port = bind(
        "--grpc-health-port",
        settings.grpc_health_port,
        lambda: server.add_insecure_port(f"[::]:{settings.grpc_health_port}"),
    )
    return server, port


async def serve_until_signal(
    settings: S, start: Callable[[S], Awaitable[R]], stop: Callable[[R], Awaitable[None]]
) -> None:
    runtime = await start(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await stop(runtime)


def run_server(
    program: str, settings: S, start: Callable[[S], Awaitable[R]], stop: Callable[[R], Awaitable[None]]
) -> int:
    """Log as the flags say, start, serve until SIGTERM / SIGINT, stop; 1 when startup fails (said on stderr)."""
    epp_logging.configure_options(log_options(settings))
    raise_open_files_limit()
    try:
        uvloop.run(serve_until_signal(settings, start, stop))
    except StartupError as exc:
        logging.getLogger(program.replace(" ", ".")).error("%s", exc)
        print(f"{program}: {exc}", flush=True, file=sys.stderr)
        return 1
    return 0
