"""Property tests of the ext_proc core and the body parser (Hypothesis, bounded to a few seconds)."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from epp.datastore.table import EndpointTable
from epp.director import Director
from epp.errors import EppError
from epp.extproc.core import ExtProcStream
from epp.extproc.messages import BODY_CHUNK_LIMIT
from epp.requests.openai import API_SUFFIXES, ParsedBody, parse_openai_body
from epp.requests.parsers import openai_parser
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from tests.support.extproc import BUFFERED, FULL_DUPLEX, body_msg, headers_msg, make_table, response_body_msg, split
from tests.support.least_queue import LeastQueueScheduler

BOUNDED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PATHS = st.sampled_from([f"/v1{suffix}" for suffix in API_SUFFIXES] + ["/other"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=20,
)


def new_stream() -> tuple[ExtProcStream, EndpointTable]:
    table = make_table("10.0.0.1:8000", "10.0.0.2:8000")
    return ExtProcStream(Director(table, LeastQueueScheduler(seed=1)), openai_parser), table


def response_headers(end: bool) -> pb.ProcessingRequest:
    message = pb.ProcessingRequest()
    message.response_headers.headers.headers.add(key="content-type", raw_value=b"application/json")
    message.response_headers.end_of_stream = end
    return message


def trailers(kind: str) -> pb.ProcessingRequest:
    message = pb.ProcessingRequest()
    getattr(message, kind).SetInParent()
    return message


MESSAGES = st.one_of(
    st.builds(lambda eos, mode: headers_msg(end_of_stream=eos, mode=mode), st.booleans(), st.sampled_from([None, 2])),
    st.builds(body_msg, st.sampled_from([b'{"model":"m","prompt":"p"}', b"{", b""]), st.booleans()),
    st.just(trailers("request_trailers")),
    st.builds(response_headers, st.booleans()),
    st.builds(lambda eos: response_body_msg(b'{"usage":{}}', eos), st.booleans()),
    st.just(trailers("response_trailers")),
    st.just(pb.ProcessingRequest()),
)


@BOUNDED
@given(st.lists(MESSAGES, max_size=12))
def test_any_message_order_holds_at_most_one_charge_and_releases_it(messages: list[pb.ProcessingRequest]) -> None:
    stream, table = new_stream()
    picks = 0
    for message in messages:
        responses = stream.process(message)
        stream.after_send()
        picks += sum(
            1
            for r in responses
            if r.HasField("dynamic_metadata") and "envoy.lb" in r.dynamic_metadata.fields  # a pick's answer
        )
        assert table.inflight_requests.sum() <= 1
        assert sum(r.HasField("immediate_response") for r in responses) <= 1
    assert picks <= 1
    stream.close()
    assert table.inflight_requests.sum() == 0
    assert table.inflight_tokens.sum() == 0


@BOUNDED
@given(
    prompt=st.text(max_size=300),
    cuts=st.lists(st.integers(0, 400), max_size=6),
    mode=st.sampled_from([FULL_DUPLEX, BUFFERED]),
    response_cuts=st.lists(st.integers(0, 40), max_size=4),
    close_early=st.booleans(),
)
def test_a_request_in_any_chunking_is_answered_once_with_its_body_intact(
    prompt: str, cuts: list[int], mode: int, response_cuts: list[int], close_early: bool
) -> None:
    body = orjson.dumps({"model": "m", "prompt": prompt or "x", "max_tokens": 3})
    pieces = split(body, cuts)
    if mode == BUFFERED:
        pieces = [body]
    stream, table = new_stream()
    responses = stream.process(headers_msg(mode=mode))
    for index, piece in enumerate(pieces):
        responses += stream.process(body_msg(piece, end_of_stream=index == len(pieces) - 1))
    kinds = [r.WhichOneof("response") for r in responses]
    assert kinds.count("request_headers") == 1 and "immediate_response" not in kinds
    if mode == FULL_DUPLEX:
        chunks = [r.request_body.response.body_mutation.streamed_response for r in responses[1:]]
        assert b"".join(c.body for c in chunks) == body
        assert all(len(c.body) <= BODY_CHUNK_LIMIT for c in chunks)
        assert [c.end_of_stream for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert table.inflight_requests.sum() == 1
    if not close_early:
        stream.process(response_headers(False))
        answer = b'{"object":"text_completion","usage":{"prompt_tokens":1}}'
        parts = split(answer, response_cuts)
        echoed = b""
        for index, part in enumerate(parts):
            for r in stream.process(response_body_msg(part, end_of_stream=index == len(parts) - 1)):
                echoed += r.response_body.response.body_mutation.streamed_response.body
        assert echoed == answer or mode == BUFFERED
        assert table.inflight_requests.sum() == 0
    stream.close()
    assert table.inflight_requests.sum() == 0


def parsed_or_400(raw: bytes, path: str) -> None:
    try:
        result = parse_openai_body(raw, path)
    except EppError as error:
        assert error.code == "BadRequest" and error.http_status == 400
        return
    assert isinstance(result, ParsedBody) and isinstance(result.prompt_bytes, bytes)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), PATHS)
def test_parser_on_arbitrary_bytes_is_a_parsed_body_or_a_400(raw: bytes, path: str) -> None:
    parsed_or_400(raw, path)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["model", "prompt", "messages", "input", "items", "x"]), JSON), PATHS)
def test_parser_on_arbitrary_json_objects_is_a_parsed_body_or_a_400(body: dict[str, object], path: str) -> None:
    parsed_or_400(orjson.dumps(body), path)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 1030), st.sampled_from([b"[", b'{"a":']), PATHS)
def test_parser_on_any_nesting_depth_is_a_parsed_body_or_a_400(depth: int, opener: bytes, path: str) -> None:
    closer = b"]" if opener == b"[" else b"}"
    value = opener * depth + b"1" + closer * depth
    for field in (b"prompt", b"messages", b"input", b"items", b"x"):
        parsed_or_400(b'{"model":"m","%s":%s}' % (field, value), path)
