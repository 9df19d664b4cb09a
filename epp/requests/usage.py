"""Token usage from model-server responses: whole JSON bodies and Server-Sent Events streams."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeGuard

import orjson

from epp.scheduling.types import Usage

_INPUT_OUTPUT = ("input_tokens", "output_tokens")
_PROMPT_COMPLETION = ("prompt_tokens", "completion_tokens")


def _mapping(value: Any) -> TypeGuard[Mapping[str, Any]]:
    """isinstance(value, Mapping), without the ABC check for the dicts and Nones a parsed JSON body holds."""
    return isinstance(value, dict) or (value is not None and isinstance(value, Mapping))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_of(document: Mapping[str, Any]) -> Usage | None:
    """Usage of one response document (a JSON body or one SSE event), or None if it carries none."""
    if document.get("type") == "response.completed" and _mapping(document.get("response")):
        document = document["response"]
    usage = document.get("usage")
    if not _mapping(usage):
        return None
    kind = document.get("object")
    kind = kind if isinstance(kind, str) else ""
    if kind.startswith(("response", "conversation")):
        names = [_INPUT_OUTPUT]
    elif kind in ("chat.completion", "chat.completion.chunk", "text_completion"):
        names = [_PROMPT_COMPLETION]
    else:
        names = [_PROMPT_COMPLETION, _INPUT_OUTPUT]
    prompt = completion = 0
    for input_key, output_key in names:
        if input_key in usage or output_key in usage:
            prompt, completion = _int(usage.get(input_key)), _int(usage.get(output_key))
            break
    cached = 0
    reported = False
    for details_key in ("prompt_tokens_details", "prompt_token_details", "input_tokens_details"):
        details = usage.get(details_key)
        if _mapping(details):
            reported = "cached_tokens" in details
            cached = _int(details.get("cached_tokens"))
            break
    total = _int(usage.get("total_tokens")) or prompt + completion
    return Usage(prompt, completion, total, cached, cached_reported=reported)


def usage_from_json(body: bytes) -> Usage | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return usage_of(document) if isinstance(document, dict) else None


#: longest SSE line held while waiting for its end (a usage event is a few hundred bytes); a longer one is
#: skipped up to its newline, so a stream without newlines costs linear time and bounded memory
MAX_EVENT_LINE = 1 << 20


class SSEUsageScanner:
    """Feeds raw SSE chunks (lines may split across chunks); the first event with usage wins."""

    def __init__(self) -> None:
        self._tail: list[bytes] = []  # pieces of the line not ended yet
        self._tail_size = 0
        self._overlong = False  # the line not ended yet passed MAX_EVENT_LINE: skipped to its newline
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        if self.usage is not None:
            return
        last = chunk.rfind(b"\n")
        if last < 0:
            self._hold(chunk)
            return
        if not self._tail and b'"usage"' not in chunk:  # the common event chunk: nothing to parse
            self._overlong = False
            self._hold(chunk[last + 1 :])
            return
        lines = chunk[:last].split(b"\n")
        if self._overlong:
            lines[0] = b""
        elif self._tail:
            lines[0] = b"".join(self._tail) + lines[0]
        self._tail, self._tail_size, self._overlong = [], 0, False
        self._hold(chunk[last + 1 :])
        for line in lines:
            if line.startswith(b"data:") and b'"usage"' in line:
                self._parse(line[5:].strip())
                if self.usage is not None:
                    return

    def _hold(self, piece: bytes) -> None:
        if self._overlong or not piece:
            return
        self._tail.append(piece)
        self._tail_size += len(piece)
        if self._tail_size > MAX_EVENT_LINE:
            self._tail, self._tail_size, self._overlong = [], 0, True

    def finish(self) -> None:
        if self.usage is None and self._tail:
            line = b"".join(self._tail)
            if line.startswith(b"data:"):
                self._parse(line[5:].strip())
        self._tail, self._tail_size, self._overlong = [], 0, False

    def _parse(self, payload: bytes) -> None:
        if payload == b"[DONE]":
            return
        self.usage = usage_from_json(payload)
