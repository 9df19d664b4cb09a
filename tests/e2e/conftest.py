from __future__ import annotations

from collections.abc import Iterator

import pytest

from epp.devstack.envoy import EnvoyProcess, free_port, render_bootstrap
from epp.devstack.processes import EppProcess
from tests.e2e.backends import EchoBackends


@pytest.fixture(scope="module")
def backends() -> Iterator[EchoBackends]:
    servers = EchoBackends([free_port() for _ in range(3)])
    servers.start()
    yield servers
    servers.stop()


def endpoints_arg(backends: EchoBackends) -> str:
    return ",".join(f"127.0.0.1:{p}" for p in backends.ports)


@pytest.fixture(scope="module")
def epp(backends: EchoBackends) -> Iterator[EppProcess]:
    process = EppProcess(["--endpoints", endpoints_arg(backends)])
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def envoy(epp: EppProcess) -> Iterator[EnvoyProcess]:
    with EnvoyProcess(render_bootstrap("envoy", free_port(), free_port(), epp.grpc_port)) as process:
        yield process
