"""The ext_proc core against a hostile client: deep JSON, messages out of order, oversized bodies."""

from __future__ import annotations

import gc
import logging
import tracemalloc

import pytest

from epp.datastore.table import EndpointTable
from epp.director import Director
from epp.errors import EppError
from epp.extproc.core import ExtProcStream
from epp.extproc.phases import LEGAL_IN, Phase, Wait
from epp.requests.openai import MAX_JSON_DEPTH, parse_openai_body
from epp.requests.parsers import openai_parser
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from tests.support.extproc import (
    BODY,
    BUFFERED,
    body_msg,
    headers_msg,
    make_table,
    response_body_msg,
    response_headers_msg,
)
from tests.support.least_queue import LeastQueueScheduler


def inflight(table: EndpointTable) -> float:
    return float(table.inflight_requests.sum())


def new_stream(table: EndpointTable, max_body: int | None = None) -> ExtProcStream:
    director = Director(table, LeastQueueScheduler(seed=1))
    if max_body is None:
        return ExtProcStream(director, openai_parser)
    return ExtProcStream(director, openai_parser, max_body_bytes=max_body)


def status_of(responses: list[pb.ProcessingResponse]) -> int:
    assert len(responses) == 1 and responses[0].HasField("immediate_response"), responses
    return int(responses[0].immediate_response.status.code)


def nested(depth: int) -> bytes:
    """A JSON value of `depth` nested arrays holding a string (depth 1 = `["x"]`)."""
    return b"[" * depth + b'"x"' + b"]" * depth


# --- 1. deep JSON ------------------------------------------------------------------------------

DEEP_BODIES = [
    ("/v1/chat/completions", b'{"model":"m","messages":%s}'),
    ("/v1/chat/completions", b'{"model":"m","messages":[{"role":"user","content":%s}]}'),
    ("/v1/responses", b'{"model":"m","input":%s}'),
    ("/v1/embeddings", b'{"model":"m","input":%s}'),
    ("/v1/conversations", b'{"model":"m","items":%s}'),
    ("/v1/completions", b'{"model":"m","prompt":"p","extra":%s}'),
]


@pytest.mark.parametrize("depth", [254, 255, 300, 1019])
@pytest.mark.parametrize(("path", "template"), DEEP_BODIES)
def test_deeply_nested_json_is_400_not_a_stream_error(path: str, template: bytes, depth: int) -> None:
    table = make_table("10.0.0.1:8000")
    for rewrite in ({}, {"x-gateway-model-name-rewrite": "other"}):
        stream = new_stream(table)
        stream.process(headers_msg({":path": path, **rewrite}))
        responses = stream.process(body_msg(template % nested(depth)))
        assert status_of(responses) == 400
        assert b"nested deeper than" in responses[0].immediate_response.body
        stream.close()
    assert inflight(table) == 0


def test_nesting_within_the_limit_is_routed_and_rewritten() -> None:
    table = make_table("10.0.0.1:8000")
    stream = new_stream(table)
    stream.process(headers_msg({":path": "/v1/responses", "x-gateway-model-name-rewrite": "other"}))
    body = b'{"model":"m","input":%s}' % nested(MAX_JSON_DEPTH - 1)
    responses = stream.process(body_msg(body))
    assert [r.WhichOneof("response") for r in responses] == ["request_headers", "request_body"]
    assert b'"model":"other"' in responses[1].request_body.response.body_mutation.streamed_response.body


def test_parser_refuses_depth_above_the_limit_only() -> None:
    assert parse_openai_body(b'{"model":"m","prompt":"p","x":%s}' % nested(MAX_JSON_DEPTH - 1), "/v1/completions")
    with pytest.raises(Exception, match="nested deeper than"):
        parse_openai_body(b'{"model":"m","prompt":"p","x":%s}' % nested(MAX_JSON_DEPTH), "/v1/completions")


# --- 2 and 6. message order ----------------------------------------------------------------------


def assert_out_of_order(responses: list[pb.ProcessingResponse], stream: ExtProcStream) -> None:
    assert status_of(responses) == 400
    assert b"out of order" in responses[0].immediate_response.body
    assert stream.phase is Phase.CLOSED


def test_second_header_only_request_on_one_stream_is_refused_and_charges_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = make_table("10.0.0.1:8000", "10.0.0.2:8000")
    stream = new_stream(table)
    first = stream.process(headers_msg(end_of_stream=True))
    assert first[0].HasField("request_headers") and inflight(table) == 1
    with caplog.at_level(logging.WARNING, logger="epp.request"):
        assert_out_of_order(stream.process(headers_msg(end_of_stream=True)), stream)
        assert inflight(table) == 0  # the first pick is released at once
        for _ in range(3):  # later messages are ignored, and not logged again
            assert stream.process(headers_msg(end_of_stream=True)) == []
    assert len([r for r in caplog.records if "out of order" in r.getMessage()]) == 1
    stream.close()
    assert inflight(table) == 0


def test_headers_and_body_then_headers_again_releases_the_first_pick() -> None:
    table = make_table("10.0.0.1:8000")
    stream = new_stream(table)
    stream.process(headers_msg())
    assert stream.process(body_msg(BODY))[0].HasField("request_headers")
    assert inflight(table) == 1
    assert_out_of_order(stream.process(headers_msg()), stream)
    assert stream.process(body_msg(BODY)) == []
    stream.close()
    assert inflight(table) == 0
    assert float(table.inflight_tokens.sum()) == 0.0


@pytest.mark.parametrize("early", ["headers_end", "body_end", "trailers"])
def test_response_before_the_request_is_refused_and_no_pick_follows(early: str) -> None:
    table = make_table("10.0.0.1:8000")
    stream = new_stream(table)
    if early == "headers_end":
        message = response_headers_msg("application/json")
        message.response_headers.end_of_stream = True
    elif early == "body_end":
        message = response_body_msg(b"{}", end_of_stream=True)
    else:
        message = pb.ProcessingRequest()
        message.response_trailers.SetInParent()
    assert_out_of_order(stream.process(message), stream)
    assert stream.process(headers_msg(end_of_stream=True)) == []
    assert inflight(table) == 0
    stream.close()
    assert inflight(table) == 0


def test_body_before_headers_is_refused_not_routed_without_the_subset_hint() -> None:
    table = make_table("10.0.0.1:8000", "10.0.0.2:8000")
    stream = new_stream(table)
    assert_out_of_order(stream.process(body_msg(BODY)), stream)
    # the headers with their subset hint come too late: nothing is routed
    assert stream.process(headers_msg(subset=["10.0.0.2:8000"])) == []
    assert inflight(table) == 0


def test_response_headers_twice_release_once() -> None:
    table = make_table("10.0.0.1:8000")
    stream = new_stream(table)
    stream.process(headers_msg())
    stream.process(body_msg(BODY))
    stream.process(response_headers_msg("application/json"))
    assert_out_of_order(stream.process(response_headers_msg("application/json")), stream)
    assert inflight(table) == 0
    stream.close()
    assert inflight(table) == 0


def test_every_message_kind_has_a_phase_table_entry() -> None:
    kinds = {field.name for field in pb.ProcessingRequest.DESCRIPTOR.oneofs_by_name["request"].fields}
    assert set(LEGAL_IN) == kinds
    assert all(Phase.CLOSED not in phases and Phase.QUEUED not in phases for phases in LEGAL_IN.values())


# --- 3. request body limit -----------------------------------------------------------------------


def test_body_over_the_limit_is_413_and_its_bytes_are_dropped() -> None:
    table = make_table("10.0.0.1:8000")
    stream = new_stream(table, max_body=1000)
    stream.process(headers_msg())
    assert stream.process(body_msg(b"x" * 600, end_of_stream=False)) == []
    responses = stream.process(body_msg(b"x" * 600, end_of_stream=False))
    assert status_of(responses) == 413
    assert responses[0].immediate_response.body.startswith(b"inference error: PayloadTooLarge - ")
    assert stream._body_chunks == []
    assert stream.process(body_msg(b"x" * 600)) == []  # the rest, already on its way, is ignored
    assert inflight(table) == 0


def test_body_at_the_limit_is_routed() -> None:
    table = make_table("10.0.0.1:8000")
    stream = new_stream(table, max_body=len(BODY))
    stream.process(headers_msg())
    assert stream.process(body_msg(BODY))[0].HasField("request_headers")


@pytest.mark.parametrize("mode", [None, BUFFERED])
def test_content_length_over_the_limit_is_413_at_the_headers(mode: int | None) -> None:
    stream = new_stream(make_table("10.0.0.1:8000"), max_body=1000)
    assert status_of(stream.process(headers_msg({"content-length": "1001"}, mode=mode))) == 413


def test_large_body_buffers_are_released() -> None:
    """A refused 48 MiB body leaves no buffered bytes behind; a routed 8 MiB one none once the stream closes."""
    table = make_table("10.0.0.1:8000")
    chunk = b"x" * (1 << 20)
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        stream = new_stream(table, max_body=32 << 20)
        stream.process(headers_msg())
        refused: list[pb.ProcessingResponse] = []
        for _ in range(48):
            refused = stream.process(body_msg(chunk, end_of_stream=False)) or refused
        assert status_of(refused) == 413
        del refused
        assert tracemalloc.get_traced_memory()[0] - baseline < 4 << 20
        stream.close()

        routed = new_stream(table)
        routed.process(headers_msg())
        prompt = b'{"model":"m","prompt":"' + b"y" * (8 << 20) + b'"}'
        responses = routed.process(body_msg(prompt))
        assert len(responses) > 100
        del responses, prompt
        routed.process(response_headers_msg("application/json"))
        routed.process(response_body_msg(b"{}", end_of_stream=True))
        routed.close()
        gc.collect()
        assert tracemalloc.get_traced_memory()[0] - baseline < 4 << 20
    finally:
        tracemalloc.stop()


def test_a_message_without_a_request_kind_is_refused_not_ignored() -> None:
    table = make_table("10.0.0.1:8000")
    stream = new_stream(table)
    stream.process(headers_msg())
    responses = stream.process(pb.ProcessingRequest())
    assert status_of(responses) == 400
    assert b"message without a request out of order" in responses[0].immediate_response.body
    assert stream.phase is Phase.CLOSED


def test_flow_control_wait_is_answered_by_resume_or_refuse_only_while_queued() -> None:
    table = make_table("10.0.0.1:8000")
    stream = ExtProcStream(Director(table, LeastQueueScheduler(seed=1)), openai_parser, flow_control=True)
    with pytest.raises(RuntimeError, match=r"resume\(\) while waiting for the request headers"):
        stream.resume()
    assert stream.process(headers_msg()) == []
    wait = stream.process(body_msg(BODY))
    assert wait == Wait("default-flow", 0, len(BODY)) and stream.phase is Phase.QUEUED
    assert inflight(table) == 0, "nothing is charged while the request waits"
    responses = stream.resume()
    assert [r.WhichOneof("response") for r in responses] == ["request_headers", "request_body"]
    assert inflight(table) == 1
    with pytest.raises(RuntimeError, match=r"refuse\(\) while waiting for the response"):
        stream.refuse(EppError("ResourceExhausted", "queue full"))
    stream.close()
    assert inflight(table) == 0


def test_a_refused_wait_is_answered_with_the_queue_error() -> None:
    table = make_table("10.0.0.1:8000")
    stream = ExtProcStream(Director(table, LeastQueueScheduler(seed=1)), openai_parser, flow_control=True)
    stream.process(headers_msg())
    assert isinstance(stream.process(body_msg(BODY)), Wait)
    assert status_of(stream.refuse(EppError("ResourceExhausted", "flow control queue full"))) == 429
    assert stream.phase is Phase.CLOSED and inflight(table) == 0
