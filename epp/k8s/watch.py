"""List + watch of one kind of object, kept in a local cache (what client-go calls a reflector).

- The first list (paged) fills the cache and records its resourceVersion; the watch resumes from it
  with bookmarks on, and every event or bookmark advances it.
- A watch that ends cleanly (server timeout) is resumed at once from the last resourceVersion; a
  broken connection or an API error is retried with exponential backoff and jitter.
- 410 Gone (an ERROR event with code 410, or an HTTP 410) means the resourceVersion is older than
  the server's history: the cache is rebuilt by a fresh list, and objects that disappeared meanwhile
  are reported as deleted.
- A watch event longer than `max_line_bytes` (or one the HTTP layer cannot frame) is skipped by listing
  again: the list carries the object's current state, and the watch resumes after it.

Objects are plain dicts as the API server sends them; the listener is told what changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import aiohttp
import aiohttp.http_exceptions

from epp.tasks import spawn

log = logging.getLogger("epp.k8s")

Object = dict[str, Any]
ObjectKey = tuple[str, str]  # (namespace, name)
LIST_PAGE_SIZE = 500
#: longest watch event line read (objects are at most ~1.5 MiB in etcd; JSON escaping can grow them)
MAX_WATCH_LINE = 16 * 1024 * 1024


class ListCall(Protocol):
    """A generated list operation of kubernetes_asyncio with its path arguments bound (e.g. with
    functools.partial); called with query keyword arguments and `_preload_content=False`."""

    def __call__(self, **kwargs: Any) -> Awaitable[Any]: ...


class Listener(Protocol):
    def on_replace(self, objects: dict[ObjectKey, Object]) -> None:
        """The cache was (re)filled by a list: this is now everything that exists."""

    def on_upsert(self, obj: Object) -> None: ...

    def on_delete(self, obj: Object) -> None: ...


class Gone(Exception):
    """The resourceVersion the watch resumed from is no longer in the server's history (410)."""


class OversizedEvent(Exception):
    """A watch event line longer than the reflector reads, or the HTTP layer refused to frame one."""


class ApiCallError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass
class Backoff:
    initial: float = 0.2
    cap: float = 30.0
    factor: float = 2.0
    _next: float = field(default=0.0, init=False)

    def next(self) -> float:
        delay = self._next or self.initial
        self._next = min(delay * self.factor, self.cap)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = 0.0


def object_key(obj: Object) -> ObjectKey:
    metadata = obj.get("metadata") or {}
    return (str(metadata.get("namespace", "")), str(metadata.get("name", "")))


async def _error_message(response: Any) -> str:
    try:
        body = await response.text()
        status = json.loads(body)
        return str(status.get("message") or body)
    except (ValueError, aiohttp.ClientError, AttributeError):
        return str(getattr(response, "reason", "") or "")
    finally:
        response.release()


@dataclass
class ReflectorStats:
    lists: int = 0
    watches: int = 0
    gone: int = 0
    errors: int = 0
    events: int = 0
    bookmarks: int = 0


class Reflector:
    def __init__(
        self,
        what: str,
        list_call: ListCall,
        listener: Listener,
        label_selector: str = "",
        field_selector: str = "",
        watch_timeout_s: int = 300,
        backoff: Backoff | None = None,
        max_line_bytes: int = MAX_WATCH_LINE,
    ) -> None:
        self.what = what
        self.max_line_bytes = max_line_bytes
        self._list_call = list_call
        self._listener = listener
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout_s = watch_timeout_s
        self.backoff = backoff or Backoff()
        self.objects: dict[ObjectKey, Object] = {}
        self.resource_version = ""
        self.synced = asyncio.Event()
        self.stats = ReflectorStats()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = spawn(self.run(), f"reflector {self.what}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def run(self) -> None:
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
            except asyncio.CancelledError:
                raise
            except ListenerError as exc:
                # a bug on our side, not the API server's: say so loudly, then rebuild from a fresh list
                self.stats.errors += 1
                delay = self.backoff.next()
                log.error("%s: %s; listing again in %.1fs", self.what, exc, delay, exc_info=exc.__cause__)
                await asyncio.sleep(delay)
                need_list = True
            except (OversizedEvent, aiohttp.http_exceptions.HttpProcessingError) as exc:
                self.stats.errors += 1
                delay = self.backoff.next()
                log.warning("%s: %s; listing again in %.1fs", self.what, _describe(exc), delay)
                await asyncio.sleep(delay)
                need_list = True
            except Gone:
                self.stats.gone += 1
                log.info(
                    "%s: resourceVersion %s is too old (410 Gone); listing again", self.what, self.resource_version
                )
                need_list = True
            except (aiohttp.ClientError, ApiCallError, OSError, TimeoutError, ValueError) as exc:
                self.stats.errors += 1
                delay = self.backoff.next()
                log.warning("%s: %s; retrying in %.1fs", self.what, _describe(exc), delay)
                await asyncio.sleep(delay)
                if not self.resource_version:
                    need_list = True

    def _query(self) -> dict[str, Any]:
        query: dict[str, Any] = {"_preload_content": False}
        if self.label_selector:
            query["label_selector"] = self.label_selector
        if self.field_selector:
            query["field_selector"] = self.field_selector
        return query

    async def _list(self) -> None:
        items: list[Object] = []
        token = ""
        while True:
            query = {**self._query(), "limit": LIST_PAGE_SIZE, "_request_timeout": 60}
            if token:
                query["_continue"] = token
            response = await self._list_call(**query)
            if response.status == 410:
                response.release()
                token = ""
                items = []
                continue  # the continue token expired: start the list over
            if response.status != 200:
                raise ApiCallError(response.status, await _error_message(response))
            document = await response.json(content_type=None)
            response.release()
            items.extend(document.get("items") or [])
            metadata = document.get("metadata") or {}
            token = metadata.get("continue") or ""
            if not token:
                break
        self.stats.lists += 1
        self.resource_version = str(metadata.get("resourceVersion", ""))
        self.objects = {object_key(o): o for o in items}
        with _listener_call("the list"):
            self._listener.on_replace(dict(self.objects))
        self.synced.set()

    async def _watch(self) -> None:
        timeout = self.watch_timeout_s + random.randint(0, max(1, self.watch_timeout_s // 10))
        query = {
            **self._query(),
            "watch": True,
            "allow_watch_bookmarks": True,
            "resource_version": self.resource_version,
            "timeout_seconds": timeout,
            "_request_timeout": aiohttp.ClientTimeout(sock_connect=10, sock_read=timeout + 30),
        }
        response = await self._list_call(**query)
        if response.status == 410:
            response.release()
            raise Gone()
        if response.status != 200:
            raise ApiCallError(response.status, await _error_message(response))
        self.stats.watches += 1
        self.backoff.reset()
        try:
            async for line in _lines(response.content, self.max_line_bytes):
                if line.strip():
                    self._apply(_event(line))
        finally:
            response.release()

    def _apply(self, event: Object) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ApiCallError(int(obj.get("code") or 500), str(obj.get("message") or obj))
        version = str((obj.get("metadata") or {}).get("resourceVersion", ""))
        if kind == "BOOKMARK":
            self.stats.bookmarks += 1
        elif kind in ("ADDED", "MODIFIED"):
            self.stats.events += 1
            self.objects[object_key(obj)] = obj
            with _listener_call(f"{kind} {object_key(obj)}"):
                self._listener.on_upsert(obj)
        elif kind == "DELETED":
            self.stats.events += 1
            self.objects.pop(object_key(obj), None)
            with _listener_call(f"{kind} {object_key(obj)}"):
                self._listener.on_delete(obj)
        else:
            raise ValueError(f"unknown watch event type {kind!r}")
        if version:
            self.resource_version = version


def _event(line: bytes) -> Object:
    """One watch event line decoded; ValueError (which the run loop handles) for anything but an event object
    whose `object` and its `metadata` are mappings."""
    try:
        event = json.loads(line)
    except RecursionError:
        raise ValueError("watch event nested too deeply") from None
    if not isinstance(event, dict):
        raise ValueError(f"watch event is not a JSON object: {line[:80]!r}")
    obj = event.get("object")
    if obj is not None and not isinstance(obj, dict):
        raise ValueError(f"watch event's object is not a JSON object: {line[:80]!r}")
    metadata = (obj or {}).get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError(f"watch event's object metadata is not a JSON object: {line[:80]!r}")
    return cast(Object, event)


async def _lines(content: Any, limit: int) -> AsyncIterator[bytes]:
    """The newline-separated lines of a watch body, each at most `limit` bytes (aiohttp's readline stops at
    twice its read buffer with LineTooLong, which is neither a ClientError nor a ValueError)."""
    pending: list[bytes] = []
    size = 0
    async for data in content.iter_any():
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if size + end - start > limit:
                raise OversizedEvent(f"watch event longer than {limit} bytes")
            pending.append(data[start:end])
            yield b"".join(pending)
            pending, size, start = [], 0, end + 1
        if start < len(data):
            pending.append(data[start:])
            size += len(data) - start
            if size > limit:
                raise OversizedEvent(f"watch event longer than {limit} bytes")
    if pending:
        yield b"".join(pending)


class ListenerError(Exception):
    """The listener failed to apply a change: the Reflector logs it and lists again."""


@contextlib.contextmanager
def _listener_call(what: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        raise ListenerError(f"applying {what} failed: {type(exc).__name__}: {exc}") from exc


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiCallError):
        if exc.status == 403:
            return f"{exc} (the EPP's service account needs get, list and watch on it: see docs/kubernetes.md, RBAC)"
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
