"""Standalone discovery without Kubernetes: `--endpoints ip:port,...` and `--endpoints-file FILE`.

The endpoints file is YAML, either a list or a mapping with `endpoints:`; each entry has `address` (an IP
literal), `port`, and optionally `name`, `labels` and `metricsPort`. It is re-read when it changes; a broken
edit is reported and the last good list stays in force.

Writers should replace the file atomically (write a temporary file, then rename it). For those that rewrite it
in place, the watcher applies a version only once it has stayed unchanged for one poll interval and did not
change while it was read, and refuses an empty file, so a truncated or half-written file is not applied.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from epp.datastore.table import Endpoint, EndpointTable
from epp.tasks import spawn

log = logging.getLogger("epp.discovery")
POLL_INTERVAL_S = 0.5
#: the initial load re-reads a file that changes while it is read this often, this far apart
START_ATTEMPTS = 5
START_RETRY_S = 0.1

#: (st_dev, st_ino, st_mtime_ns, st_size): a rename, an in-place write or a truncation changes it
Stamp = tuple[int, int, int, int]
MISSING: Stamp = (-1, -1, -1, -1)


class EndpointSpecError(ValueError):
    pass


def _check_host(host: str, where: str) -> str:
    address = host.strip("[]")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise EndpointSpecError(
            f"{where}: {host!r} is not an IP address; the gateway routes to ip:port (Envoy's ORIGINAL_DST cluster "
            "does not resolve host names), so use the pod's or server's IP, e.g. 127.0.0.1 instead of localhost"
        ) from None
    return address


def _check_port(port: Any, where: str) -> int:
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise EndpointSpecError(f"{where}: port {port!r} must be an integer from 1 to 65535")
    return port


def parse_endpoints_flag(value: str) -> list[Endpoint]:
    """`10.0.0.1:8000,10.0.0.2:8000` (IPv6 as `[::1]:8000`) → endpoints named by their ip:port."""
    endpoints = []
    for i, item in enumerate(part.strip() for part in value.split(",")):
        where = f"--endpoints item {i + 1} ({item!r})"
        host, sep, port = item.rpartition(":")
        if not sep or not host:
            raise EndpointSpecError(f"{where}: expected ip:port, e.g. 127.0.0.1:8000")
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
        unknown = sorted(str(key) for key in set(item) - known)
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


def check_capacity(endpoints: list[Endpoint], capacity: int, source: str) -> None:
    """Refuse more endpoints than the table holds, before any of them replaces what is there."""
    if len(endpoints) > capacity:
        raise EndpointSpecError(
            f"{source}: {len(endpoints)} endpoints, more than the endpoint table's capacity of {capacity}; "
            f"start epp with --max-endpoints {len(endpoints)} or more, or list fewer endpoints"
        )


def parse_endpoints_text(text: str, path: Path) -> list[Endpoint]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise EndpointSpecError(f"--endpoints-file {path}: invalid YAML: {exc}") from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise EndpointSpecError(f"--endpoints-file {path}: invalid YAML: nested too deeply") from None
    if document is None:  # also what a truncated file, mid-rewrite, reads as
        raise EndpointSpecError(
            f"--endpoints-file {path}: the file is empty; to run with no endpoints write `endpoints: []`"
        )
    return parse_endpoints_document(document, str(path))


def file_stamp(path: Path) -> Stamp:
    try:
        stat = os.stat(path)
    except OSError:
        return MISSING
    return (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)


def read_if_unchanged(path: Path, stamp: Stamp) -> str | None:
    """The file's text if the file still has `stamp` once read, else None (a writer is at work: try again).

    Raises EndpointSpecError when the file, still at `stamp`, cannot be read (e.g. it is missing)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        if file_stamp(path) != stamp:
            return None
        reason = exc.strerror if isinstance(exc, OSError) else f"not UTF-8 text ({exc})"
        raise EndpointSpecError(f"--endpoints-file {path}: {reason or exc}") from None
    return text if file_stamp(path) == stamp else None


class EndpointsFileWatcher:
    """Applies the file to the table now and whenever its contents change.

    A new version is read once its stamp is the one the previous poll saw (unchanged for a poll interval),
    and applied only if the stamp is still the same after reading: a writer rewriting the file in place
    is given time to finish instead of its empty or half-written file being applied."""

    def __init__(self, path: Path, table: EndpointTable, on_sync: Callable[[], None] | None = None) -> None:
        self.path = path
        self.table = table
        self._on_sync = on_sync
        self._current: Stamp | None = None  # the version applied or reported as broken
        self._pending: Stamp | None = None  # a newer version seen at the last poll, waiting to settle
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0
        self.errors = 0

    def _read(self, stamp: Stamp) -> list[Endpoint] | None:
        """The endpoints of the file at `stamp`, or None if it changed while being read."""
        text = read_if_unchanged(self.path, stamp)
        if text is None:
            return None
        endpoints = parse_endpoints_text(text, self.path)
        check_capacity(endpoints, self.table.capacity, f"--endpoints-file {self.path}")
        return endpoints

    def _read_at_start(self) -> tuple[Stamp, list[Endpoint]]:
        for _ in range(START_ATTEMPTS):
            stamp = file_stamp(self.path)
            endpoints = self._read(stamp)
            if endpoints is not None:
                return stamp, endpoints
            time.sleep(START_RETRY_S)
        raise EndpointSpecError(
            f"--endpoints-file {self.path}: the file kept changing while it was read; "
            "write it to a temporary file and rename it into place"
        )

    def load_now(self) -> None:
        """Initial load: errors propagate (the EPP refuses to start on a broken file)."""
        stamp, endpoints = self._read_at_start()
        self.table.replace_all(endpoints)
        self._current = stamp
        if self._on_sync is not None:
            self._on_sync()

    def poll(self) -> bool:
        """Re-read the file if it changed and has settled; returns True when the table was updated."""
        stamp = file_stamp(self.path)
        if stamp == self._current:
            self._pending = None
            return False
        if stamp != self._pending:
            self._pending = stamp
            return False
        try:
            endpoints = self._read(stamp)
        except EndpointSpecError as exc:
            self._current = stamp
            self.errors += 1
            log.error("endpoints file not applied, keeping the previous %d endpoints: %s", len(self.table), exc)
            return False
        if endpoints is None:
            return False
        self.table.replace_all(endpoints)
        self._current = stamp
        self.reloads += 1
        log.info("endpoints file reloaded: %d endpoints", len(endpoints))
        return True

    def start(self) -> None:
        self._task = spawn(self._run(), "endpoints-file")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            try:
                self.poll()
            except Exception:
                # a bug must not end discovery for good: the version is retried at the next poll
                self.errors += 1
                log.exception("endpoints file %s: unexpected error while applying it; still watching", self.path)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
