"""The pure ext_proc state machine: messages in, responses out, no gRPC."""

from __future__ import annotations

import orjson
import pytest

from epp.director import Director
from epp.extproc.core import ExtProcStream
from epp.extproc.messages import BODY_CHUNK_LIMIT
from epp.requests.parsers import openai_parser, passthrough_parser
from epp_pb.envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from tests.support.extproc import (
    BODY,
    BUFFERED,
    FULL_DUPLEX,
    FixedScheduler,
    body_msg,
    headers_msg,
    make_table,
    response_body_msg,
    response_headers_msg,
    set_headers,
    stream_for,
)
from tests.support.least_queue import LeastQueueScheduler


def test_full_duplex_holds_headers_until_body_complete_and_echoes_body() -> None:
    table = make_table("10.0.0.1:8000", "10.0.0.2:8000")
    table.waiting_queue[table.slot_of_hostport("10.0.0.1:8000")] = 5
    stream = stream_for(table)
    assert stream.process(headers_msg({"x-request-id": "rid-1"}, mode=FULL_DUPLEX)) == []
    assert stream.process(body_msg(BODY[:10], end_of_stream=False)) == []
    responses = stream.process(body_msg(BODY[10:], end_of_stream=True))
    assert [r.WhichOneof("response") for r in responses] == ["request_headers", "request_body"]
    headers_response, body_response = responses
    assert headers_response.request_headers.response.clear_route_cache
    assert set_headers(headers_response) == {"x-gateway-destination-endpoint": "10.0.0.2:8000"}
    lb = headers_response.dynamic_metadata.fields["envoy.lb"].struct_value
    assert lb.fields["x-gateway-destination-endpoint"].string_value == "10.0.0.2:8000"
    streamed = body_response.request_body.response.body_mutation.streamed_response
    assert streamed.body == BODY and streamed.end_of_stream


def test_split_json_across_chunks_is_parsed_after_reassembly() -> None:
    table = make_table("10.0.0.1:8000")
    scheduler = FixedScheduler("10.0.0.1:8000")
    stream = stream_for(table, scheduler)
    body = b'{"max_tokens":100,"model":"sql-lo' + b'ra-sheddable","prompt":"test6","temperature":0}'
    stream.process(headers_msg({"x-request-id": "r"}))
    stream.process(body_msg(body[:33], end_of_stream=False))
    responses = stream.process(body_msg(body[33:]))
    assert scheduler.seen[0].model == "sql-lora-sheddable"
    assert responses[1].request_body.response.body_mutation.streamed_response.body == body


def test_missing_request_id_is_generated_and_injected_upstream() -> None:
    stream = stream_for(make_table("10.0.0.1:8000"))
    stream.process(headers_msg())
    headers = set_headers(stream.process(body_msg(BODY))[0])
    assert len(headers["x-request-id"]) == 36


def test_invalid_json_is_400() -> None:
    stream = stream_for(make_table("10.0.0.1:8000"))
    stream.process(headers_msg({"x-request-id": "r"}))
    (response,) = stream.process(body_msg(b"no healthy upstream"))
    immediate = response.immediate_response
    assert immediate.status.code == 400
    assert immediate.body.startswith(b"inference error: BadRequest - error unmarshaling request bodyMap: ")


def test_missing_model_is_400() -> None:
    stream = stream_for(make_table("10.0.0.1:8000"))
    stream.process(headers_msg({"x-request-id": "r"}))
    (response,) = stream.process(body_msg(b'{"prompt":"hello world"}'))
    assert response.immediate_response.status.code == 400
    assert response.immediate_response.body == b"inference error: BadRequest - model not found in request body"


def test_non_string_model_is_400() -> None:
    stream = stream_for(make_table("10.0.0.1:8000"))
    stream.process(headers_msg())
    (response,) = stream.process(body_msg(b'{"model":7,"prompt":"x"}'))
    assert response.immediate_response.body == b"inference error: BadRequest - model not found in request body"


def test_subset_hint_restricts_candidates_by_ip() -> None:
    table = make_table("10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000")
    table.waiting_queue[table.slot_of_hostport("10.0.0.3:8000")] = 10
    stream = stream_for(table)
    stream.process(headers_msg(subset=["10.0.0.3:9999", 42]))
    headers = set_headers(stream.process(body_msg(BODY))[0])
    assert headers["x-gateway-destination-endpoint"] == "10.0.0.3:8000"


def test_subset_hint_matching_nothing_is_503() -> None:
    stream = stream_for(make_table("10.0.0.1:8000"))
    stream.process(headers_msg(subset=["192.168.1.99:8000"]))
    (response,) = stream.process(body_msg(BODY))
    assert response.immediate_response.status.code == 503
    assert response.immediate_response.body == (
        b"inference error: ServiceUnavailable - failed to find endpoint candidates for serving the request"
    )


def test_subset_hint_ignored_when_disabled() -> None:
    table = make_table("10.0.0.1:8000")
    director = Director(table, LeastQueueScheduler(), subset_filter=False)
    stream = ExtProcStream(director, openai_parser)
    stream.process(headers_msg(subset=["192.168.1.99:8000"]))
    assert set_headers(stream.process(body_msg(BODY))[0])["x-gateway-destination-endpoint"] == "10.0.0.1:8000"


def test_empty_pool_with_body_is_503() -> None:
    stream = stream_for(make_table())
    stream.process(headers_msg())
    (response,) = stream.process(body_msg(BODY))
    assert response.immediate_response.status.code == 503


def test_scheduler_failure_is_429() -> None:
    stream = stream_for(make_table("10.0.0.1:8000"), FixedScheduler(fail=True))
    stream.process(headers_msg())
    (response,) = stream.process(body_msg(BODY))
    assert response.immediate_response.status.code == 429
    assert response.immediate_response.body == (
        b"inference error: ResourceExhausted - failed to find target endpoint: "
        b"no endpoints available for the given request"
    )


def test_header_only_request_picks_at_once() -> None:
    table = make_table("10.0.0.1:8000", "10.0.0.2:8000")
    stream = stream_for(table)
    (response,) = stream.process(headers_msg({":method": "GET"}, end_of_stream=True))
    assert response.WhichOneof("response") == "request_headers"
    assert set_headers(response)["x-gateway-destination-endpoint"] in {"10.0.0.1:8000", "10.0.0.2:8000"}


def test_header_only_request_on_empty_pool_is_500() -> None:
    stream = stream_for(make_table())
    (response,) = stream.process(headers_msg(end_of_stream=True))
    assert response.immediate_response.status.code == 500
    assert response.immediate_response.body == b"inference error: Internal - no pods available in datastore"


def test_fallback_endpoints_are_comma_separated_in_header_and_metadata() -> None:
    table = make_table("10.0.0.1:8000", "10.0.0.2:8000", "[fd00::1]:8000")
    stream = stream_for(table, FixedScheduler("10.0.0.2:8000", "[fd00::1]:8000", "10.0.0.1:8000"))
    stream.process(headers_msg())
    response = stream.process(body_msg(BODY))[0]
    expected = "10.0.0.2:8000,[fd00::1]:8000,10.0.0.1:8000"
    assert set_headers(response)["x-gateway-destination-endpoint"] == expected
    lb = response.dynamic_metadata.fields["envoy.lb"].struct_value
    assert lb.fields["x-gateway-destination-endpoint"].string_value == expected


def test_large_body_is_returned_in_chunks_of_at_most_62000_bytes() -> None:
    prompt = "x" * 150_000
    body = orjson.dumps({"model": "m", "prompt": prompt})
    stream = stream_for(make_table("10.0.0.1:8000"))
    stream.process(headers_msg())
    chunks = [body[i : i + 16384] for i in range(0, len(body), 16384)]
    responses = []
    for i, chunk in enumerate(chunks):
        responses += stream.process(body_msg(chunk, end_of_stream=i == len(chunks) - 1))
    bodies = [r.request_body.response.body_mutation.streamed_response for r in responses[1:]]
    assert [len(b.body) for b in bodies] == [BODY_CHUNK_LIMIT, BODY_CHUNK_LIMIT, len(body) - 2 * BODY_CHUNK_LIMIT]
    assert [b.end_of_stream for b in bodies] == [False, False, True]
    assert b"".join(b.body for b in bodies) == body


def test_model_rewrite_header_rewrites_body_and_sets_content_length() -> None:
    scheduler = FixedScheduler("10.0.0.1:8000")
    stream = stream_for(make_table("10.0.0.1:8000"), scheduler)
    stream.process(headers_msg({"x-gateway-model-name-rewrite": "m-v2"}))
    headers_response, body_response = stream.process(body_msg(BODY))
    new_body = body_response.request_body.response.body_mutation.streamed_response.body
    assert orjson.loads(new_body) == {**orjson.loads(BODY), "model": "m-v2"}
    assert set_headers(headers_response)["content-length"] == str(len(new_body))
    assert (scheduler.seen[0].model, scheduler.seen[0].target_model) == ("m", "m-v2")
    # the response carries the client's model name again
    stream.process(response_headers_msg("application/json"))
    assert stream.process(response_body_msg(b'{"model":"m-v2","choices":[', end_of_stream=False)) == []
    (tail,) = stream.process(response_body_msg(b"]}", end_of_stream=True))
    assert tail.response_body.response.body_mutation.streamed_response.body == b'{"model":"m","choices":[]}'


def test_buffered_mode_answers_headers_at_once_and_picks_on_the_body() -> None:
    stream = stream_for(make_table("10.0.0.1:8000"))
    (headers_response,) = stream.process(headers_msg({"x-request-id": "r"}, mode=BUFFERED))
    assert headers_response.WhichOneof("response") == "request_headers"
    assert set_headers(headers_response) == {}
    (body_response,) = stream.process(body_msg(BODY))
    assert body_response.WhichOneof("response") == "request_body"
    assert body_response.request_body.response.clear_route_cache
    assert set_headers(body_response)["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
    assert not body_response.request_body.response.HasField("body_mutation")


def test_unsupported_body_mode_fails_loudly() -> None:
    stream = stream_for(make_table("10.0.0.1:8000"))
    (response,) = stream.process(headers_msg(mode=mode_pb.ProcessingMode.STREAMED))
    assert response.immediate_response.status.code == 500
    assert b"STREAMED is not supported" in response.immediate_response.body


def test_request_trailers_end_the_body() -> None:
    stream = stream_for(make_table("10.0.0.1:8000"))
    stream.process(headers_msg())
    stream.process(body_msg(BODY, end_of_stream=False))
    trailers = pb.ProcessingRequest()
    trailers.request_trailers.SetInParent()
    responses = stream.process(trailers)
    assert [r.WhichOneof("response") for r in responses] == ["request_headers", "request_body", "request_trailers"]
    assert not responses[1].request_body.response.body_mutation.streamed_response.end_of_stream


def test_streamed_response_chunks_pass_through_at_once_and_sse_usage_is_read() -> None:
    table = make_table("10.0.0.1:8000")
    completed = []

    class Observer:
        def picked(self, decision: object) -> None:
            pass

        def failed(self, *args: object) -> None:
            pass

        def completed(self, decision: object, usage: object, response_bytes: int, seconds: float) -> None:
            completed.append((usage, response_bytes))

        def first_response_chunk(self, decision: object, seconds: float) -> None:
            pass

        def processing(self, request_seconds: float, response_seconds: float) -> None:
            pass

    director = Director(table, LeastQueueScheduler())
    stream = ExtProcStream(director, openai_parser, Observer())
    stream.process(headers_msg())
    stream.process(body_msg(b'{"model":"m","prompt":"p","stream":true}'))
    slot = table.slot_of_hostport("10.0.0.1:8000")
    assert table.inflight_requests[slot] == 1
    (headers_response,) = stream.process(response_headers_msg("text/event-stream", served="10.0.0.1:8000"))
    assert headers_response.WhichOneof("response") == "response_headers"
    assert stream.served_endpoint == "10.0.0.1:8000"
    chunks = [
        b'data: {"object":"text_completion","choices":[{"text":"a"}]}\n\ndata: {"object":"text_',
        b'completion","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":10,"total_tokens":17}}\n\n',
        b"data: [DONE]\n\n",
    ]
    for i, chunk in enumerate(chunks):
        (echo,) = stream.process(response_body_msg(chunk, end_of_stream=i == 2))
        streamed = echo.response_body.response.body_mutation.streamed_response
        assert streamed.body == chunk and streamed.end_of_stream == (i == 2)
    assert table.inflight_requests[slot] == 0
    ((usage, size),) = completed
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 10, 17)
    assert size == sum(map(len, chunks))


def test_each_streamed_chunk_after_the_first_reaches_the_hooks_until_the_response_ends() -> None:
    """The first chunk is the first token (first_response); every later one marks an engine step's end."""
    table = make_table("10.0.0.1:8000")
    seen: list[str] = []

    class Hooks:
        def pre_request(self, *args: object) -> None:
            pass

        def first_response(self, *args: object) -> None:
            seen.append("first")

        def response_chunk(self, result: object) -> None:
            seen.append("chunk")

        def response_complete(self, *args: object) -> None:
            seen.append("complete")

    stream = ExtProcStream(Director(table, LeastQueueScheduler(), hooks=Hooks()), openai_parser)  # type: ignore[arg-type]
    stream.process(headers_msg())
    stream.process(body_msg(b'{"model":"m","prompt":"p","stream":true}'))
    stream.process(response_headers_msg("text/event-stream", served="10.0.0.1:8000"))
    for i, text in enumerate(("a", "b", "c")):
        stream.process(response_body_msg(b'data: {"choices":[{"text":"%s"}]}\n\n' % text.encode(), end_of_stream=False))
        assert seen[-1] == ("first" if i == 0 else "chunk")
    stream.process(response_body_msg(b"data: [DONE]\n\n", end_of_stream=True))
    assert seen == ["first", "chunk", "chunk", "chunk", "complete"]


def test_json_response_usage_is_read_at_end_of_stream() -> None:
    table = make_table("10.0.0.1:8000")
    seen = []

    class Hooks:
        def pre_request(self, *args: object) -> None:
            pass

        def first_response(self, *args: object) -> None:
            pass

        def response_chunk(self, result: object) -> None:
            pass

        def response_complete(self, request: object, result: object, usage: object, table: object) -> None:
            seen.append(usage)

    stream = ExtProcStream(Director(table, LeastQueueScheduler(), hooks=Hooks()), openai_parser)  # type: ignore[arg-type]
    stream.process(headers_msg())
    stream.process(body_msg(BODY))
    stream.process(response_headers_msg("application/json"))
    doc = b'{"object":"chat.completion","usage":{"prompt_tokens":3,"completion_tokens":4,'
    stream.process(response_body_msg(doc, end_of_stream=False))
    stream.process(response_body_msg(b'"prompt_tokens_details":{"cached_tokens":2}}}', end_of_stream=True))
    (usage,) = seen
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.cached_tokens) == (3, 4, 7, 2)


def test_client_disconnect_releases_in_flight_load_once() -> None:
    table = make_table("10.0.0.1:8000")
    stream = stream_for(table)
    stream.process(headers_msg())
    stream.process(body_msg(BODY))
    slot = table.slot_of_hostport("10.0.0.1:8000")
    assert table.inflight_requests[slot] == 1 and table.inflight_tokens[slot] > 0
    stream.close()
    stream.close()
    assert table.inflight_requests[slot] == 0 and table.inflight_tokens[slot] == 0


def test_passthrough_parser_forwards_any_body_unchanged() -> None:
    stream = stream_for(make_table("10.0.0.1:8000"), parser=passthrough_parser)
    stream.process(headers_msg())
    responses = stream.process(body_msg(b"passthrough-parser"))
    assert responses[1].request_body.response.body_mutation.streamed_response.body == b"passthrough-parser"


def test_response_trailers_complete_the_request() -> None:
    table = make_table("10.0.0.1:8000")
    stream = stream_for(table)
    stream.process(headers_msg())
    stream.process(body_msg(BODY))
    stream.process(response_headers_msg("application/grpc"))
    stream.process(response_body_msg(b"\x00\x00", end_of_stream=False))
    trailers = pb.ProcessingRequest()
    trailers.response_trailers.SetInParent()
    (response,) = stream.process(trailers)
    assert response.WhichOneof("response") == "response_trailers"
    assert table.inflight_requests[table.slot_of_hostport("10.0.0.1:8000")] == 0


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/chat/completions", b'{"model":"m","messages":[]}', b"messages must be a non-empty list"),
        ("/v1/completions", b'{"model":"m"}', b"prompt must be a non-empty string"),
        ("/v1/embeddings", b'{"model":"m","input":""}', b"input must not be empty"),
    ],
)
def test_api_validation_by_path(path: str, body: bytes, message: bytes) -> None:
    stream = stream_for(make_table("10.0.0.1:8000"))
    stream.process(headers_msg({":path": path}))
    (response,) = stream.process(body_msg(body))
    assert response.immediate_response.status.code == 400
    assert message in response.immediate_response.body


def test_chat_prompt_bytes_cover_the_whole_message_list() -> None:
    scheduler = FixedScheduler("10.0.0.1:8000")
    stream = stream_for(make_table("10.0.0.1:8000"), scheduler)
    stream.process(headers_msg({":path": "/v1/chat/completions"}))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    stream.process(body_msg(orjson.dumps({"model": "m", "messages": messages})))
    assert scheduler.seen[0].api == "chat/completions"
    assert scheduler.seen[0].prompt_bytes == orjson.dumps(messages)
