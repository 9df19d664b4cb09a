"""Token usage from model-server responses: whole JSON bodies and Server-Sent Events streams."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from epp.scheduling.types import Usage

_INPUT_OUTPUT = ("input_tokens", "output_tokens")
_PROMPT_COMPLETION = ("prompt_tokens", "completion_tokens")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_of(document: Mapping[str, Any]) -> Usage | None:
    """Usage of one response document (a JSON body or one SSE event), or None if it carries none."""
    if document.get("type") == "response.completed" and isinstance(document.get("response"), Mapping):
        document = document["response"]
    usage = document.get("usage")
    if not isinstance(usage, Mapping):
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
        if isinstance(details, Mapping):
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


class SSEUsageScanner:
    """Feeds raw SSE chunks (lines may split across chunks); the first event with usage wins."""

    def __init__(self) -> None:
        self._tail = b""
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        if self.usage is not None:
            return
        data = self._tail + chunk
        lines = data.split(b"\n")
        self._tail = lines.pop()
        if b'"usage"' not in data:
            return
        for line in lines:
            if self.usage is None and line.startswith(b"data:") and b'"usage"' in line:
                self._parse(line[5:].strip())

    def finish(self) -> None:
        if self.usage is None and self._tail.startswith(b"data:"):
            self._parse(self._tail[5:].strip())
        self._tail = b""

    def _parse(self, payload: bytes) -> None:
        if payload == b"[DONE]":
            return
        self.usage = usage_from_json(payload)
