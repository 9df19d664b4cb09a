"""OpenAI-style request bodies: model, prompt bytes for prefix hashing, stream flag, validation.

Used by the `openai-parser`; `passthrough-parser` skips all of this.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from epp.errors import bad_request

# Checked in this order: the longest suffixes that share a tail come first.
API_SUFFIXES: tuple[str, ...] = ("/conversations", "/responses", "/chat/completions", "/completions", "/embeddings")
#: deepest nesting of arrays and objects accepted in a body (the top-level object is level 1). orjson parses up
#: to 1024 levels but serialises only 254, and the prompt bytes wrap a field in two more levels; no real
#: request comes near this.
MAX_JSON_DEPTH = 200


@dataclass
class ParsedBody:
    body: dict[str, Any]
    model: str
    api: str
    prompt_bytes: bytes
    stream: bool
    cache_salt: str


@functools.lru_cache(maxsize=1024)
def api_of_path(path: str) -> str:
    """Map a request path to its API: `chat/completions`, `completions`, ... (default `completions`)."""
    path = path.split("?", 1)[0].rstrip("/")
    for suffix in API_SUFFIXES:
        if path.endswith(suffix):
            return suffix[1:]
    return "completions"


def request_path(headers: Mapping[str, str]) -> str:
    return headers.get(":path") or headers.get("x-original-path") or headers.get("x-forwarded-path") or ""


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"error unmarshaling request bodyMap: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request(f"error unmarshaling request bodyMap: expected a JSON object, got {type(body).__name__}")
    # Only a body with more opening brackets than the limit can nest that deep: a C-speed count spares the
    # walk for nearly every request.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and nesting_exceeds(body, MAX_JSON_DEPTH):
        raise bad_request(f"error unmarshaling request bodyMap: nested deeper than {MAX_JSON_DEPTH} levels")
    return body


def nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels deep (iterative: no recursion limit)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _dumps(value: Any) -> bytes:
    """orjson.dumps that answers 400 for what it cannot serialise (e.g. nesting it refuses)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise bad_request(f"error marshaling request body: {exc}") from None


def _prompt_bytes(api: str, body: Mapping[str, Any]) -> bytes:
    if api == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            if not prompt:
                raise bad_request("invalid completions request: prompt must not be empty")
            return prompt.encode()
        if isinstance(prompt, list) and prompt:
            if all(isinstance(p, str) for p in prompt):
                return " ".join(prompt).encode()
            if all(isinstance(p, int) for p in prompt):
                return _dumps(prompt)
        raise bad_request(
            "invalid completions request: prompt must be a non-empty string, list of strings or token ids"
        )
    if api == "chat/completions":
        return _dumps(_non_empty_list(body, "messages", "chat completions"))
    if api == "responses":
        if "input" not in body:
            raise bad_request("invalid responses request: input is required")
        parts = [{key: body[key]} for key in ("instructions", "tools", "input") if key in body]
        return _dumps(parts)
    if api == "conversations":
        return _dumps(_non_empty_list(body, "items", "conversations"))
    if api == "embeddings":
        value = body.get("input")
        if value is None or value == "" or value == []:
            raise bad_request("invalid embeddings request: input must not be empty")
        return _dumps(value)
    raise AssertionError(api)


def _non_empty_list(body: Mapping[str, object], key: str, request_kind: str) -> list[object]:
    value = body.get(key)
    if not isinstance(value, list) or not value:
        raise bad_request(f"invalid {request_kind} request: {key} must be a non-empty list")
    return value


def parse_openai_body(raw: bytes, path: str) -> ParsedBody:
    """Parse and validate a body; raises EppError(BadRequest) with the reference's messages."""
    body = parse_json_object(raw)
    model = body.get("model")
    if not isinstance(model, str):
        raise bad_request("model not found in request body")
    api = api_of_path(path)
    cache_salt = body.get("cache_salt")
    return ParsedBody(
        body=body,
        model=model,
        api=api,
        prompt_bytes=_prompt_bytes(api, body),
        stream=body.get("stream") is True,
        cache_salt=cache_salt if isinstance(cache_salt, str) else "",
    )


def rewrite_model(body: dict[str, Any], target: str) -> bytes:
    """The body with `model` set to `target` (re-serialised; key order kept, numbers unchanged)."""
    body["model"] = target
    return _dumps(body)
