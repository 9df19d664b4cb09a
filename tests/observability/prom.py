"""Real Prometheus for tests: installs the Debian package when missing, runs it on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from epp.devstack.envoy import env_without_proxies, free_port
from epp.devstack.lifecycle import stop_process
from tests.system_packages import PackageMissing, PackageNotInstallable, ensure_debian_package, install_command

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "observability" / "alerts.yaml"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


PrometheusMissing = PackageMissing
PrometheusNotInstallable = PackageNotInstallable
INSTALL_COMMAND = install_command("prometheus")


def ensure_installed(timeout: float = 600.0) -> tuple[str, str]:
    """Paths of prometheus and promtool, installing the `prometheus` Debian package if needed."""
    prometheus, promtool = ensure_debian_package(
        "prometheus",
        ("prometheus", "promtool"),
        "put prometheus and promtool (https://prometheus.io/download) on PATH",
        timeout,
    )
    return prometheus, promtool


class Prometheus:
    """A Prometheus server scraping `targets` (job name → host:port) every second, with our alert rules."""

    def __init__(self, binary: str, targets: dict[str, str]) -> None:
        self.binary = binary
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="prometheus-"))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in targets.items()
            ],
        }
        self.config_path = self.directory / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = self.directory / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        command = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env_without_proxies())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}: {self.log()}")
            try:
                with _OPENER.open(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready after {timeout}s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with _OPENER.open(f"http://127.0.0.1:{self.port}/api/v1/{path}?{query}", timeout=5) as response:
            document = json.loads(response.read())
        assert document["status"] == "success", document
        return document["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def series(self, name: str) -> list[dict[str, str]]:
        result: list[dict[str, str]] = self.api("series", **{"match[]": name})
        return result

    def wait_for(self, expr: str, predicate: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Poll an instant query until `predicate(result)` holds; returns the result."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.25)
        raise AssertionError(f"{expr}: condition not met within {timeout}s; last result {result}")
