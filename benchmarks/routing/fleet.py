"""The processes of one benchmark run: the simulated fleet, epp, Envoy; their CPU use from /proc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from epp.devstack.envoy import env_without_proxies, free_port_range

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_TICKS = os.sysconf("SC_CLK_TCK")


def start_fleet(
    model: str,
    count: int,
    time_scale: float,
    stream_interval: int,
    adapters: list[str],
    max_loras: int = 1,
    speeds: list[float] | None = None,
    num_gpu_blocks: int = 0,
) -> tuple[subprocess.Popen[bytes], int]:
    """`count` simulated servers with the calibrated defaults in one process; returns it and the first port.
    `speeds` gives each server's speed factor, `num_gpu_blocks` (when > 0) each server's KV blocks. A port
    taken by another process between the check and the bind is retried on another range (three times)."""
    arguments = (model, count, time_scale, stream_interval, adapters, max_loras, speeds, num_gpu_blocks)
    for _ in range(2):
        try:
            return _start_fleet(*arguments)
        except PortTaken:
            pass
    return _start_fleet(*arguments)


class PortTaken(RuntimeError):
    """The simulators could not bind a port of the range they were given."""


def _start_fleet(
    model: str,
    count: int,
    time_scale: float,
    stream_interval: int,
    adapters: list[str],
    max_loras: int,
    speeds: list[float] | None,
    num_gpu_blocks: int,
) -> tuple[subprocess.Popen[bytes], int]:
    base = free_port_range(count)
    command = [
        sys.executable, "-m", "vllmsim.cli", "--model", model, "--port", str(base), "--count", str(count),
        "--time-scale", str(time_scale), "--stream-interval", str(stream_interval),
    ]  # fmt: skip
    if adapters:
        command += ["--max-loras", str(max_loras), "--lora-modules", *adapters]
    if speeds:
        command += ["--speeds", ",".join(f"{s:g}" for s in speeds)]
    if num_gpu_blocks:
        command += ["--num-gpu-blocks", str(num_gpu_blocks)]
    # the simulators' stderr goes to a file: a peer probing them (sglang-router tries HTTP/2 first) is noise
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed below; the child keeps its own descriptor)
    process = subprocess.Popen(command, env=env_without_proxies(), stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 60
    for port in range(base, base + count):
        while not _healthy(port):
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                process.wait()
                log.seek(0)
                text = log.read()[-2000:].decode(errors="replace")
                error = PortTaken if "address already in use" in text else RuntimeError
                raise error(f"simulated fleet did not start: {text}")
            time.sleep(0.1)
    log.close()  # the child keeps its own descriptor
    return process, base


def set_speed(port: int, factor: float) -> float:
    """POST /sim/speed to one simulated server; returns the factor it reports."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/sim/speed",
        data=json.dumps({"factor": factor}).encode(),
        headers={"content-type": "application/json"},
    )
    # the simulators' process is busiest exactly when a run past saturation changes a speed: give it time
    with _OPENER.open(request, timeout=60) as response:
        return float(json.loads(response.read())["factor"])


def _healthy(port: int) -> bool:
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}/health", timeout=1):
            return True
    except OSError:
        return False


def engine_ttfts(base: int, count: int) -> tuple[list[float], list[float]]:
    """Every finished request's TTFT as its simulated server measured it, in model time (each simulator's GET
    /sim/ttft): from its arrival at the server to the engine's first token, and to that token's chunk handed to
    the connection (streamed requests). What the client measures beyond the second is the router's path (the
    router, Envoy, epp's handling of the request and of the response's first chunk)."""
    engine: list[float] = []
    written: list[float] = []
    for port in range(base, base + count):
        with _OPENER.open(f"http://127.0.0.1:{port}/sim/ttft", timeout=5) as response:
            document = json.loads(response.read())
        engine += document["ttft"]
        written += [w for w in document["written"] if w is not None]
    return engine, written


def fleet_counters(base: int, count: int) -> list[dict[str, float]]:
    """Each server's vLLM counters that the report needs (prefix cache, preemptions, tokens)."""
    wanted = (
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
        "vllm:num_preemptions",
        "vllm:prompt_tokens",
        "vllm:generation_tokens",
    )
    servers = []
    for port in range(base, base + count):
        totals: defaultdict[str, float] = defaultdict(float)
        with _OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(wanted):
                    name = line.split("{", 1)[0].split(" ", 1)[0].removesuffix("_total")
                    totals[name] += float(line.rsplit(" ", 1)[1])
        servers.append(dict(totals))
    return servers


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class CpuMeter:
    """CPU seconds of named process trees (a process and its descendants) between start() and stop()."""

    roots: dict[str, int]
    started: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0

    def _sample(self) -> dict[str, float]:
        tree = _children()
        totals = {}
        for name, root in self.roots.items():
            pids, stack = [], [root]
            while stack:
                pid = stack.pop()
                pids.append(pid)
                stack.extend(tree.get(pid, []))
            totals[name] = sum(_cpu_seconds(pid) for pid in pids)
        return totals

    def start(self) -> None:
        self.started = self._sample()
        self.wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        """Cores used by each tree over the window."""
        ended, wall = self._sample(), time.monotonic() - self.wall
        return {name: (ended[name] - self.started.get(name, 0.0)) / wall for name in self.roots} if wall else {}
