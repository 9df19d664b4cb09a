"""The body parsers a config selects (`openai-parser`, the default, or `passthrough-parser`): raw request body
and path in, the parsed request out (None: route without reading the body)."""

from __future__ import annotations

from collections.abc import Callable

from epp.requests.openai import ParsedBody, parse_openai_body

BodyParser = Callable[[bytes, str], ParsedBody | None]


def openai_parser(raw: bytes, path: str) -> ParsedBody | None:
    return parse_openai_body(raw, path)


def passthrough_parser(raw: bytes, path: str) -> ParsedBody | None:
    return None
