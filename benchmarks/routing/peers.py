"""Peer routers measured beside epp: vllm-router and sglang-router (Rust binaries shipped in their PyPI wheels).

A peer is an HTTP proxy itself: it is started against the run's fleet and the load generator talks to it
directly (no Envoy). A config name such as `vllm-router:cache_aware` names the peer and its `--policy`.
Each peer runs in its own session (process group) and is stopped by signalling the whole group, so nothing
it spawned outlives the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from epp.devstack.envoy import env_without_proxies, free_port

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

#: peer name → (console script, arguments before the common flags, the policies this harness accepts)
PEERS: dict[str, tuple[str, list[str], tuple[str, ...]]] = {
    "vllm-router": ("vllm-router", [], ("round_robin", "cache_aware", "random")),
    "sglang-router": ("sglang-router", ["launch"], ("round_robin", "cache_aware", "random")),
}


class PeerUnavailable(RuntimeError):
    """The peer's binary is not installed (or the spec names no known peer or policy)."""


def is_peer(config: str) -> bool:
    return ":" in config


def parse_spec(config: str) -> tuple[str, str]:
    name, _, policy = config.partition(":")
    if name not in PEERS:
        raise PeerUnavailable(f"unknown peer {name!r} in {config!r}; known: {', '.join(PEERS)}")
    if policy not in PEERS[name][2]:
        raise PeerUnavailable(f"unknown policy {policy!r} for {name}; use one of {', '.join(PEERS[name][2])}")
    return name, policy


def executable(name: str) -> str | None:
    """The peer's console script: next to this interpreter (the project's venv) or on PATH."""
    script = PEERS[name][0]
    beside = Path(sys.executable).parent / script
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(script)


def command(config: str, port: int, metrics_port: int, workers: list[str]) -> list[str]:
    """The exact command line that starts `config` (e.g. `sglang-router:cache_aware`) on 127.0.0.1:`port`."""
    name, policy = parse_spec(config)
    binary = executable(name)
    if binary is None:
        raise PeerUnavailable(f'{PEERS[name][0]} not installed (EPP_EXTRAS=test,bench source scripts/venv.sh "")')
    _, subcommand, _ = PEERS[name]
    return [
        binary, *subcommand, "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *workers,
        "--policy", policy, "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
        "--log-level", "warning" if name == "vllm-router" else "warn",
    ]  # fmt: skip


@dataclass
class PeerRouter:
    config: str
    workers: list[str]
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(prefix="peer-", suffix=".log")[1]))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        argv = command(self.config, self.port, self.metrics_port, self.workers)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env_without_proxies(), start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.config} did not become ready: {self.log()}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        """Both routers answer /readiness with 200 once their workers are registered and healthy."""
        try:
            with _OPENER.open(f"{self.url}/readiness", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the peer's process group, SIGKILL to the group after `timeout` seconds."""
        process = self.process
        if process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=timeout)
                if sig == signal.SIGTERM:
                    # the leader is gone; make sure nothing it started is left in its group
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                break
            except subprocess.TimeoutExpired:
                continue
        process.wait()
        self.log_path.unlink(missing_ok=True)
