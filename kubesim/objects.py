"""What the kubesim store holds and hands out: objects, the API errors it answers with, and the events and
watches of list/watch."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubesim.resources import ResourceType

Object = dict[str, Any]


class ApiError(Exception):
    """An error the API answers with a Status object."""

    def __init__(self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})

    def status(self) -> Object:
        status: Object = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            status["details"] = self.details
        return status


def not_found(rtype: ResourceType, name: str) -> ApiError:
    resource = f"{rtype.plural}.{rtype.group}" if rtype.group else rtype.plural
    return ApiError(
        404,
        "NotFound",
        f'{resource} "{name}" not found',
        {"name": name, "group": rtype.group, "kind": rtype.plural},
    )


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    obj: Object
    #: the object before a MODIFIED (filtered watches need it to turn the event into ADDED/DELETED)
    old: Object | None = None


#: what a watch queue carries: an event, or None = the server drops this watch
WatchItem = tuple[str, Object] | None


@dataclass(eq=False)
class Watch:
    rtype: ResourceType
    namespace: str | None
    matches_labels: Callable[[Mapping[str, str]], bool]
    matches_fields: Callable[[Object], bool]
    queue: asyncio.Queue[WatchItem] = field(default_factory=asyncio.Queue)
    #: the server should cut the connection (not end the stream cleanly) when dropped
    abrupt: bool = False

    def selects(self, obj: Object) -> bool:
        metadata = obj.get("metadata", {})
        if self.namespace is not None and metadata.get("namespace", "") != self.namespace:
            return False
        return self.matches_labels(metadata.get("labels") or {}) and self.matches_fields(obj)

    def offer(self, event: Event) -> None:
        now = self.selects(event.obj)
        if event.type == "MODIFIED" and event.old is not None:
            before = self.selects(event.old)
            if now and not before:
                self.queue.put_nowait(("ADDED", copy.deepcopy(event.obj)))
            elif before and not now:
                self.queue.put_nowait(("DELETED", copy.deepcopy(event.obj)))
            elif now:
                self.queue.put_nowait(("MODIFIED", copy.deepcopy(event.obj)))
        elif now:
            self.queue.put_nowait((event.type, copy.deepcopy(event.obj)))
