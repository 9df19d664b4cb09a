"""Body-based routing's protocol state machine: messages in, responses out, no gRPC."""

from __future__ import annotations

import orjson
import pytest

from epp.bbr.stream import MODEL_HEADER, BodyRouterCounts, BodyRouterStream, Outcome, model_of
from epp.extproc.messages import BODY_CHUNK_LIMIT, BUFFERED, FULL_DUPLEX
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from tests.support.extproc import (
    body_msg,
    headers_msg,
    response_body_msg,
    response_headers_msg,
    set_headers,
)


def stream(streaming: bool = True, max_body: int = 1 << 20) -> tuple[BodyRouterStream, BodyRouterCounts]:
    counts = BodyRouterCounts()
    return BodyRouterStream(counts, streaming, max_body), counts


def removed(response: pb.ProcessingResponse) -> list[str]:
    common = getattr(response, response.WhichOneof("response")).response
    return list(common.header_mutation.remove_headers)


def streamed_body(responses: list[pb.ProcessingResponse]) -> bytes:
    return b"".join(r.request_body.response.body_mutation.streamed_response.body for r in responses)


@pytest.mark.parametrize(
    ("body", "outcome", "model"),
    [
        (b'{"model":"llama-3","prompt":"hi"}', Outcome.SUCCESS, "llama-3"),
        (b'{"messages":[{"role":"user","content":"hi"}]}', Outcome.MODEL_NOT_IN_BODY, ""),
        (b"[1, 2]", Outcome.MODEL_NOT_IN_BODY, ""),
        (b"no healthy upstream", Outcome.MODEL_NOT_PARSED, ""),
        (b'{"model": 7}', Outcome.MODEL_NOT_PARSED, ""),
        (b'{"model": ""}', Outcome.MODEL_NOT_PARSED, ""),
    ],
)
def test_model_of(body: bytes, outcome: Outcome, model: str) -> None:
    assert model_of(body) == (outcome, model)


def test_full_duplex_sets_the_header_and_forwards_the_body_unchanged() -> None:
    bbr, counts = stream()
    raw = b'{ "prompt": "x",  "model" : "model-b", "n": 12345678901234567}'
    assert bbr.process(headers_msg({"x-gateway-model-name": "spoofed"}, mode=FULL_DUPLEX)) == []
    assert bbr.process(body_msg(raw[:10], end_of_stream=False)) == []
    responses = bbr.process(body_msg(raw[10:]))
    head = responses[0]
    assert head.WhichOneof("response") == "request_headers"
    assert head.request_headers.response.clear_route_cache
    assert set_headers(head) == {MODEL_HEADER: "model-b"}
    assert streamed_body(responses[1:]) == raw
    assert responses[-1].request_body.response.body_mutation.streamed_response.end_of_stream
    assert (counts.success, counts.model_not_in_body, counts.model_not_parsed) == (1, 0, 0)


def test_large_body_is_chunked_back() -> None:
    bbr, _ = stream()
    raw = orjson.dumps({"model": "m", "prompt": "x" * (3 * BODY_CHUNK_LIMIT)})
    bbr.process(headers_msg(mode=FULL_DUPLEX))
    responses = bbr.process(body_msg(raw))
    assert len(responses) == 1 + 4 and streamed_body(responses[1:]) == raw


def test_buffered_answers_headers_then_the_body_with_the_header() -> None:
    bbr, _ = stream(streaming=False)
    first = bbr.process(headers_msg())  # no protocol_config: --streaming=false means BUFFERED
    assert [r.WhichOneof("response") for r in first] == ["request_headers"]
    assert set_headers(first[0]) == {}
    (body,) = bbr.process(body_msg(b'{"model":"model-a"}'))
    assert body.WhichOneof("response") == "request_body"
    assert body.request_body.response.clear_route_cache
    assert set_headers(body) == {MODEL_HEADER: "model-a"}
    assert not body.request_body.response.HasField("body_mutation")  # forwarded as it is


def test_announced_mode_wins_over_the_streaming_flag() -> None:
    bbr, _ = stream(streaming=False)
    assert bbr.process(headers_msg(mode=FULL_DUPLEX)) == []
    bbr2, _ = stream(streaming=True)
    assert len(bbr2.process(headers_msg(mode=BUFFERED))) == 1


@pytest.mark.parametrize(("raw", "count"), [(b'{"prompt":"p"}', (0, 1, 0)), (b"not json", (0, 0, 1))])
def test_without_a_model_the_clients_header_is_removed(raw: bytes, count: tuple[int, int, int]) -> None:
    bbr, counts = stream()
    bbr.process(headers_msg({MODEL_HEADER: "spoofed"}, mode=FULL_DUPLEX))
    responses = bbr.process(body_msg(raw))
    assert set_headers(responses[0]) == {} and removed(responses[0]) == [MODEL_HEADER]
    assert responses[0].request_headers.response.clear_route_cache  # the client's header may have chosen a route
    assert streamed_body(responses[1:]) == raw
    assert (counts.success, counts.model_not_in_body, counts.model_not_parsed) == count


def test_header_only_request() -> None:
    bbr, counts = stream()
    (response,) = bbr.process(headers_msg(end_of_stream=True, mode=FULL_DUPLEX))
    assert response.WhichOneof("response") == "request_headers" and removed(response) == [MODEL_HEADER]
    assert response.request_headers.response.clear_route_cache
    assert counts == BodyRouterCounts()


def test_body_over_the_limit_is_413() -> None:
    bbr, _ = stream(max_body=10)
    assert bbr.process(headers_msg(mode=FULL_DUPLEX)) == []
    (response,) = bbr.process(body_msg(b'{"model":"m","prompt":"long"}'))
    assert response.immediate_response.status.code == 413
    assert bbr.process(body_msg(b"more")) == []  # answered: the rest is ignored
    early, _ = stream(max_body=10)
    (response,) = early.process(headers_msg({"content-length": "11"}, mode=FULL_DUPLEX))
    assert response.immediate_response.status.code == 413


def test_out_of_order_is_400() -> None:
    bbr, _ = stream()
    (response,) = bbr.process(body_msg(b"{}"))
    assert response.immediate_response.status.code == 400


def test_trailers_end_the_body() -> None:
    bbr, counts = stream()
    bbr.process(headers_msg(mode=FULL_DUPLEX))
    assert bbr.process(body_msg(b'{"model":"m"}', end_of_stream=False)) == []
    trailers = pb.ProcessingRequest()
    trailers.request_trailers.SetInParent()
    responses = bbr.process(trailers)
    assert set_headers(responses[0]) == {MODEL_HEADER: "m"}
    assert not responses[1].request_body.response.body_mutation.streamed_response.end_of_stream
    assert responses[-1].WhichOneof("response") == "request_trailers" and counts.success == 1


def test_response_messages_pass_through() -> None:
    bbr, _ = stream()
    bbr.process(headers_msg(mode=FULL_DUPLEX))
    bbr.process(body_msg(b'{"model":"m"}'))
    (headers,) = bbr.process(response_headers_msg("application/json"))
    assert headers.WhichOneof("response") == "response_headers" and set_headers(headers) == {}
    (chunk,) = bbr.process(response_body_msg(b'{"ok":true}', end_of_stream=True))
    streamed = chunk.response_body.response.body_mutation.streamed_response
    assert (streamed.body, streamed.end_of_stream) == (b'{"ok":true}', True)
