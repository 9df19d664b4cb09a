"""Take docs/status-page.png: the metrics port's status page (/debug) of a real stack under load.

    python scripts/status_page_screenshot.py [--out docs/status-page.png] [--servers 4] [--clients 12]

Starts simulated vLLM servers (named and labelled through an endpoints file), epp and Envoy, keeps
`--clients` concurrent requests going (three tenants with their own system prompts, so prefix affinity
shows), and screenshots /debug in headless Chromium while the load is on. Needs Chromium
(`apt-get install -y chromium`, as root).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from epp.devstack.envoy import EnvoyProcess, free_port, free_port_range, render_bootstrap
from epp.devstack.processes import EppProcess
from epp.devstack.stack import MODEL, start_simulators

REPO = Path(__file__).resolve().parents[1]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def ask(port: int, prompt: str, tokens: int) -> None:
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": tokens}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions", data=body, headers={"content-type": "application/json"}
    )
    try:
        with _OPENER.open(request, timeout=60) as response:
            response.read()
    except urllib.error.HTTPError as error:
        error.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "docs" / "status-page.png"))
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=8.0, help="load before the screenshot")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("needs Chromium: as root run apt-get update && apt-get install -y chromium", file=sys.stderr)
        return 2
    base = free_port_range(args.servers)
    simulators = start_simulators(args.servers, base, time_scale=1.0)
    directory = Path(tempfile.mkdtemp(prefix="status-page-"))
    endpoints = [
        {"address": "127.0.0.1", "port": base + i, "name": f"vllm-{'abcdefgh'[i]}",
         "labels": {"app": "vllm", "zone": f"zone-{i % 2}", "gpu": "h100" if i % 2 else "l4"}}
        for i in range(args.servers)
    ]  # fmt: skip
    (directory / "endpoints.yaml").write_text(yaml.safe_dump(endpoints))
    epp = EppProcess(
        ["--endpoints-file", str(directory / "endpoints.yaml"), "--metrics-endpoint-auth=false", "--tracing=false"]
    )
    stop = threading.Event()
    try:
        epp.start()
        with EnvoyProcess(render_bootstrap("envoy", free_port(), free_port(), epp.grpc_port)) as envoy:
            systems = [f"You are the assistant of tenant {t}; answer briefly. " * 12 for t in "ABC"]

            def client(k: int) -> None:
                i = 0
                while not stop.is_set() and i < 10_000:
                    ask(
                        envoy.listener_port, f"{systems[k % 3]}Question {k}.{i}: where does this go?", 48 + 16 * (k % 4)
                    )
                    i += 1

            threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(args.clients)]
            for thread in threads:
                thread.start()
            time.sleep(args.seconds)
            url = f"http://127.0.0.1:{epp.metrics_port}/debug?refresh=0"
            done = subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--hide-scrollbars", f"--screenshot={args.out}", "--window-size=1400,1000", url],
                capture_output=True, text=True, timeout=90, check=False,
            )  # fmt: skip
            stop.set()
            for thread in threads:
                thread.join(40)
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
        print(f"wrote {args.out}")
        return 0
    finally:
        stop.set()
        epp.stop()
        simulators.terminate()
        simulators.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
