from __future__ import annotations

from epp.requests.usage import SSEUsageScanner, usage_from_json


def test_responses_api_usage_names() -> None:
    usage = usage_from_json(b'{"object":"response","usage":{"input_tokens":5,"output_tokens":6}}')
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (5, 6, 11)


def test_no_usage() -> None:
    assert usage_from_json(b'{"object":"text_completion"}') is None
    assert usage_from_json(b"not json") is None


def test_sse_scanner_ignores_done_and_takes_first_usage() -> None:
    scanner = SSEUsageScanner()
    scanner.feed(b'data: {"object":"chat.completion.chunk","choices":[]}\n\n')
    scanner.feed(b'data: {"object":"chat.completion.chunk","usage":{"prompt_tokens":1,"completion_tokens":2}}')
    scanner.feed(b"\n\ndata: [DONE]\n\n")
    scanner.finish()
    assert scanner.usage is not None and scanner.usage.total_tokens == 3


def test_sse_responses_completed_event() -> None:
    scanner = SSEUsageScanner()
    scanner.feed(b'event: response.completed\ndata: {"type":"response.completed","response":{"object":"response",'
                 b'"usage":{"input_tokens":3,"output_tokens":4}}}\n\n')  # fmt: skip
    assert scanner.usage is not None and scanner.usage.prompt_tokens == 3
