"""Saturate simulated servers from outside the EPP: `python -m tests.e2e.hog MODEL PER_SERVER URL...` keeps
PER_SERVER never-ending completions open on each server until it is killed (the servers then abort them)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import subprocess
import sys
import urllib.request

from epp.devstack.envoy import env_without_proxies

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def hold(model: str, url: str) -> None:
    body = json.dumps({"model": model, "prompt": "hold the batch", "max_tokens": 10_000_000}).encode()
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with contextlib.suppress(OSError):  # killed or aborted: that is the point
        _OPENER.open(request, timeout=120).read()


def start(model: str, servers: list[str], per_server: int = 6) -> subprocess.Popen[bytes]:
    """`servers` as host:port; returns the process to kill when the load should go away."""
    urls = [f"http://{server}/v1/completions" for server in servers]
    command = [sys.executable, "-m", "tests.e2e.hog", model, str(per_server), *urls]
    return subprocess.Popen(command, env=env_without_proxies())


def main(argv: list[str]) -> None:
    model, per_server, urls = argv[0], int(argv[1]), argv[2:]
    targets = [url for url in urls for _ in range(per_server)]
    with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
        list(pool.map(lambda url: hold(model, url), targets))


if __name__ == "__main__":
    main(sys.argv[1:])
