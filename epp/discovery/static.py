"""Standalone discovery without Kubernetes: `--endpoints host:port,...` and `--endpoints-file FILE`.

The endpoints file is YAML, either a list or a mapping with `endpoints:`; each entry has `address`,
`port`, and optionally `name`, `labels` and `metricsPort`. It is re-read when it changes; a broken
edit is reported and the last good list stays in force.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from epp.datastore.table import Endpoint, EndpointTable

log = logging.getLogger("epp.discovery")
POLL_INTERVAL_S = 0.5


class EndpointSpecError(ValueError):
    pass


def _check_host(host: str, where: str) -> str:
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not host or any(c.isspace() for c in host):
            raise EndpointSpecError(f"{where}: {host!r} is not an IP address or host name") from None
    return host


def _check_port(port: Any, where: str) -> int:
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise EndpointSpecError(f"{where}: port {port!r} must be an integer from 1 to 65535")
    return port


def parse_endpoints_flag(value: str) -> list[Endpoint]:
    """`10.0.0.1:8000,10.0.0.2:8000` (IPv6 as `[::1]:8000`) → endpoints named by their host:port."""
    endpoints = []
    for i, item in enumerate(part.strip() for part in value.split(",")):
        where = f"--endpoints item {i + 1} ({item!r})"
        host, sep, port = item.rpartition(":")
        if not sep or not host:
            raise EndpointSpecError(f"{where}: expected host:port, e.g. 127.0.0.1:8000")
        endpoints.append(Endpoint(address=_check_host(host, where), port=_check_port(port, where)))
    _reject_duplicates(endpoints, "--endpoints")
    return endpoints


def parse_endpoints_document(document: Any, source: str) -> list[Endpoint]:
    items = document.get("endpoints") if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise EndpointSpecError(f"{source}: expected a list of endpoints, or a mapping with an 'endpoints' list")
    endpoints = []
    known = {"address", "port", "name", "labels", "metricsPort"}
    for i, item in enumerate(items):
        where = f"{source}: endpoints[{i}]"
        if not isinstance(item, dict):
            raise EndpointSpecError(f"{where}: expected a mapping with address and port")
        unknown = sorted(set(item) - known)
        if unknown:
            raise EndpointSpecError(
                f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        if "address" not in item or "port" not in item:
            raise EndpointSpecError(f"{where}: address and port are required")
        labels = item.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(k, str) for k in labels):
            raise EndpointSpecError(f"{where}.labels: expected a mapping of string keys to string values")
        name = item.get("name") or ""
        if not isinstance(name, str):
            raise EndpointSpecError(f"{where}.name: expected a string")
        metrics_port = item.get("metricsPort")
        endpoints.append(
            Endpoint(
                address=_check_host(str(item["address"]), f"{where}.address"),
                port=_check_port(item["port"], f"{where}.port"),
                name=name,
                labels={str(k): str(v) for k, v in labels.items()},
                metrics_port=None if metrics_port is None else _check_port(metrics_port, f"{where}.metricsPort"),
            )
        )
    _reject_duplicates(endpoints, source)
    return endpoints


def _reject_duplicates(endpoints: list[Endpoint], source: str) -> None:
    seen: set[str] = set()
    at: dict[str, str] = {}
    for endpoint in endpoints:
        if endpoint.key in seen:
            raise EndpointSpecError(f"{source}: endpoint {endpoint.key} is listed twice")
        seen.add(endpoint.key)
        other = at.setdefault(endpoint.hostport, endpoint.key)
        if other != endpoint.key:
            raise EndpointSpecError(
                f"{source}: {endpoint.hostport} is listed twice (as {other} and {endpoint.key}); "
                "one address is one endpoint"
            )


def load_endpoints_file(path: Path) -> list[Endpoint]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise EndpointSpecError(f"--endpoints-file {path}: {exc.strerror or exc}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise EndpointSpecError(f"--endpoints-file {path}: invalid YAML: {exc}") from None
    return parse_endpoints_document(document if document is not None else [], str(path))


class EndpointsFileWatcher:
    """Applies the file to the table now and whenever its contents change."""

    def __init__(self, path: Path, table: EndpointTable, on_sync: Callable[[], None] | None = None) -> None:
        self.path = path
        self.table = table
        self._on_sync = on_sync
        self._stamp: tuple[float, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0
        self.errors = 0

    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size)

    def load_now(self) -> None:
        """Initial load: errors propagate (the EPP refuses to start on a broken file)."""
        self._stamp = self._file_stamp()
        self.table.replace_all(load_endpoints_file(self.path))
        if self._on_sync is not None:
            self._on_sync()

    def poll(self) -> bool:
        """Re-read the file if it changed; returns True when the table was updated."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            endpoints = load_endpoints_file(self.path)
        except EndpointSpecError as exc:
            self.errors += 1
            log.error("endpoints file not applied, keeping the previous %d endpoints: %s", len(self.table), exc)
            return False
        self.table.replace_all(endpoints)
        self.reloads += 1
        log.info("endpoints file reloaded: %d endpoints", len(endpoints))
        return True

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            self.poll()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
