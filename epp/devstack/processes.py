"""Start and stop an `epp` process for the local stack, tests and benchmarks."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.devstack.envoy import env_without_proxies, free_port
from epp.devstack.lifecycle import ChildProcess, stop_process


class EppProcess(ChildProcess):
    def __init__(
        self,
        args: Sequence[str],
        grpc_port: int | None = None,
        env: dict[str, str] | None = None,
        launcher: Sequence[str] | None = None,
    ) -> None:
        self.env = {**env_without_proxies(), **(env or {})}
        #: the command before the flags (a benchmark may run epp's process through a wrapper script)
        self.launcher = list(launcher) if launcher is not None else [sys.executable, "-m", "epp.cli"]
        self.grpc_port = grpc_port or free_port()
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.args = [
            "--grpc-port", str(self.grpc_port), "--grpc-health-port", str(self.health_port),
            "--metrics-port", str(self.metrics_port), *args,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="epp-", suffix=".log")[1])
        self._stopped_log = ""

    def start(self, timeout: float = 20.0, wait_serving: bool = True) -> None:
        log = self.log_path.open("wb")
        command = [*self.launcher, *self.args]
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        if wait_serving:
            self.wait_serving(timeout)

    def health(self, service: str = "inference-extension") -> str:
        with grpc.insecure_channel(f"127.0.0.1:{self.health_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"epp exited with {self.process.returncode}: {self.log()}")
            try:
                if self.health() == "SERVING":
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"epp not SERVING after {timeout}s: {self.log()}")

    def log(self) -> str:
        """The log's last 4,000 characters (after `stop`, as they were when it stopped)."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return self._stopped_log

    def stop(self, timeout: float = 15.0) -> int | None:
        """Stop the process and remove its log file (its tail stays readable through `log`)."""
        code = stop_process(self.process, timeout)
        self._stopped_log = self.log()
        self.log_path.unlink(missing_ok=True)
        return code
