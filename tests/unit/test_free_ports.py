"""The devstack's free-port search, as the servers it feeds bind: a port held only by connections lingering in
TIME_WAIT (hundreds after a benchmark row's short connections) is free to listen on, and runs are looked for
outside the ephemeral range, where a benchmark's outgoing connections cannot hold them."""

from __future__ import annotations

import socket
import time

import pytest

from epp.devstack import envoy
from epp.devstack.envoy import ephemeral_ports, free_port_range


def _time_wait_port() -> int:
    """A port whose only socket is a closed connection in TIME_WAIT (the side that closes first keeps it)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port: int = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    listener.close()
    accepted.close()
    time.sleep(0.05)  # the client reads the FIN, then closes its end
    client.close()
    time.sleep(0.05)
    return port


def test_a_port_with_only_time_wait_connections_counts_as_free(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _time_wait_port()
    plain = socket.socket()
    with pytest.raises(OSError):  # a bind without SO_REUSEADDR refuses it: what the search used to do
        plain.bind(("127.0.0.1", port))
    plain.close()
    monkeypatch.setattr(envoy, "_search_band", lambda count: (port, port + count))
    assert free_port_range(1, attempts=1) == port


def test_a_port_someone_listens_on_is_not_free(monkeypatch: pytest.MonkeyPatch) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    monkeypatch.setattr(envoy, "_search_band", lambda count: (port, port + count))
    try:
        with pytest.raises(RuntimeError, match="no 1 consecutive free ports"):
            free_port_range(1, attempts=2)
    finally:
        listener.close()


def test_runs_are_found_outside_the_ephemeral_range() -> None:
    low, high = ephemeral_ports()
    for _ in range(20):
        first = free_port_range(8)
        assert first + 8 <= low or first > high, (first, low, high)
