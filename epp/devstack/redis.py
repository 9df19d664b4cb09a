"""A real `redis-server` (or `valkey-server`) on 127.0.0.1 for the local stack, tests and benchmarks.

Nothing is persisted (no RDB snapshot, no append-only file): a restart starts empty, as a store without
persistence does in a cluster.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from epp.devstack.envoy import free_port
from epp.devstack.lifecycle import ChildProcess, stop_process

INSTALL_COMMAND = "apt-get update && apt-get install -y redis-server  (as root)"
BINARIES = ("redis-server", "valkey-server")


class RedisMissing(RuntimeError):
    """No server binary and no way to install one here (the message names the install command)."""


def server_binary(install: bool = True) -> str:
    """Path of redis-server (or valkey-server); as root with apt-get, installs the Debian package if missing."""
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    if not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RedisMissing(f"no redis-server or valkey-server on PATH; run: {INSTALL_COMMAND}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("the redis-server package installed no redis-server binary")
    return found


class RedisServer(ChildProcess):
    def __init__(self, port: int | None = None, password: str | None = None, binary: str | None = None) -> None:
        self.binary = binary or server_binary()
        self.port = port or free_port()
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="epp-redis-"))

    @property
    def url(self) -> str:
        secret = f":{self.password}@" if self.password else ""
        return f"redis://{secret}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self._dir), "--logfile", str(self._dir / "server.log"),
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.binary} exited with {self.process.returncode}: {self.log_tail()}")
            if self.ping():
                return
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"{self.binary} not answering on :{self.port} after {timeout}s: {self.log_tail()}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                if self.password:
                    sock.sendall(f"AUTH {self.password}\r\n".encode())
                    sock.recv(64)
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL (a crash): what it held is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        stop_process(self.process, 5.0)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self._dir / "server.log").read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
