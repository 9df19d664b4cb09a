"""A routing stream with response_body_mode NONE hands its response to the observing stream that claims it."""

from __future__ import annotations

import asyncio
import logging

import pytest

from epp.director import Director
from epp.extproc.core import ExtProcStream
from epp.extproc.observing import LATE_OBSERVER_S, OBSERVE_HEADER, ObservingStream, ResponseWatch
from epp.extproc.phases import Phase
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
    set_headers,
)
from tests.support.least_queue import LeastQueueScheduler

NONE = 0
SSE_CHUNKS = [
    b'data: {"object":"text_completion","choices":[{"text":"a"}]}\n\n',
    b'data: {"object":"text_completion","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":10,'
    b'"total_tokens":17}}\n\ndata: [DONE]\n\n',
]


class Hooks:
    def __init__(self) -> None:
        self.first: list[object] = []
        self.usages: list[object] = []

    def pre_request(self, *args: object) -> None:
        pass

    def first_response(self, *args: object) -> None:
        self.first.append(args)

    def response_chunk(self, result: object) -> None:
        pass

    def response_complete(self, request: object, result: object, usage: object, table: object) -> None:
        self.usages.append(usage)


def routed(watch: ResponseWatch, headers: dict[str, str] | None = None) -> tuple[ExtProcStream, Hooks, str, int]:
    """A routing stream (request BUFFERED, response NONE) that picked: (stream, hooks, its token, the slot)."""
    table = make_table("10.0.0.1:8000")
    hooks = Hooks()
    director = Director(table, LeastQueueScheduler(seed=1), hooks=hooks)  # type: ignore[arg-type]
    stream = ExtProcStream(director, openai_parser, watch=watch)
    stream.process(headers_msg(headers, mode=BUFFERED, response_mode=NONE))
    (pick,) = stream.process(body_msg(BODY))
    slot = table.slot_of_hostport("10.0.0.1:8000")
    assert director.table.inflight_requests[slot] == 1
    return stream, hooks, set_headers(pick).get(OBSERVE_HEADER, ""), slot


def observer_headers(token: str) -> pb.ProcessingRequest:
    message = headers_msg({OBSERVE_HEADER: token} if token else {})
    message.observability_mode = True
    return message


def test_the_observing_stream_follows_the_response_and_releases_the_pick_at_its_end() -> None:
    watch = ResponseWatch()
    stream, hooks, token, slot = routed(watch)
    table = stream._director.table
    assert token
    observer = ObservingStream(watch)
    assert observer.process(observer_headers(token)) == [] and observer.phase is Phase.ROUTED
    assert observer.process(response_headers_msg("text/event-stream")) == []
    (answer,) = stream.process(response_headers_msg("text/event-stream"))
    assert answer.WhichOneof("response") == "response_headers" and not answer.HasField("mode_override")
    assert stream.phase is Phase.DONE
    stream.close()  # the routing stream ends at its response headers: the pick stays held
    assert table.inflight_requests[slot] == 1
    assert observer.process(response_body_msg(SSE_CHUNKS[0], end_of_stream=False)) == []
    assert len(hooks.first) == 1 and table.inflight_requests[slot] == 1
    assert observer.process(response_body_msg(SSE_CHUNKS[1], end_of_stream=True)) == []
    assert observer.phase is Phase.DONE and table.inflight_requests[slot] == 0
    (usage,) = hooks.usages
    assert (usage.prompt_tokens, usage.completion_tokens) == (7, 10)  # type: ignore[attr-defined]
    observer.close()
    assert table.inflight_requests[slot] == 0 and len(hooks.usages) == 1


def test_a_response_cut_short_is_released_when_the_observing_stream_ends() -> None:
    watch = ResponseWatch()
    stream, hooks, token, slot = routed(watch)
    observer = ObservingStream(watch)
    observer.process(observer_headers(token))
    stream.process(response_headers_msg("text/event-stream"))
    stream.close()
    observer.process(response_body_msg(SSE_CHUNKS[0], end_of_stream=False))
    observer.close()
    assert stream._director.table.inflight_requests[slot] == 0 and hooks.usages == [None]


async def test_without_any_observing_stream_routing_streams_complete_at_their_own_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Envoy without the observing filter: the first pick waits for an observer in vain, then one warning, and
    each later pick is released when its routing stream ends."""
    watch = ResponseWatch()
    first, _, _, slot = routed(watch)
    first.process(response_headers_msg("text/event-stream"))
    first.close()
    assert first._director.table.inflight_requests[slot] == 1
    with caplog.at_level(logging.WARNING, logger="epp.extproc"):
        await asyncio.sleep(LATE_OBSERVER_S + 0.1)
        assert first._director.table.inflight_requests[slot] == 0 and watch.observers_absent
        for _ in range(2):
            stream, _, _, slot = routed(watch)
            stream.process(response_headers_msg("text/event-stream"))
            assert stream.phase is Phase.RESPONSE_BODY
            stream.close()
            assert stream._director.table.inflight_requests[slot] == 0
    assert watch.unobserved == 3
    assert sum("was not observed" in r.getMessage() for r in caplog.records) == 1
    ObservingStream(watch).close()  # an observing stream comes after all: routing streams wait for theirs again
    assert not watch.observers_absent


async def test_a_late_observing_stream_still_claims_and_a_missing_one_is_given_up() -> None:
    watch = ResponseWatch()
    ObservingStream(watch).close()  # an observing stream has come: Envoy has the filter
    stream, hooks, token, slot = routed(watch)
    table = stream._director.table
    stream.process(response_headers_msg("text/event-stream"))
    assert stream.phase is Phase.DONE
    stream.close()  # ended before its observing stream's first message: the pick waits for it
    assert table.inflight_requests[slot] == 1
    late = ObservingStream(watch)
    late.process(observer_headers(token))
    assert late.phase is Phase.ROUTED
    late.process(response_headers_msg("text/event-stream"))
    for index, chunk in enumerate(SSE_CHUNKS):
        late.process(response_body_msg(chunk, end_of_stream=index == 1))
    assert table.inflight_requests[slot] == 0 and len(hooks.first) == 1 and hooks.usages[0] is not None
    lost, _, _, lost_slot = routed(watch)
    lost.process(response_headers_msg("text/event-stream"))
    lost.close()
    assert lost._director.table.inflight_requests[lost_slot] == 1
    await asyncio.sleep(LATE_OBSERVER_S + 0.1)
    assert lost._director.table.inflight_requests[lost_slot] == 0 and watch.unobserved == 1


def test_observing_streams_without_a_pick_of_this_process_end_at_once(caplog: pytest.LogCaptureFixture) -> None:
    watch = ResponseWatch()
    for token in ("", "another-process-7", "another-process-8"):
        observer = ObservingStream(watch)
        with caplog.at_level(logging.WARNING, logger="epp.extproc"):
            assert observer.process(observer_headers(token)) == []
        assert observer.phase is Phase.DONE
        observer.close()
    local_reply = ObservingStream(watch)  # a local reply's response crosses the observer without request headers
    assert local_reply.process(response_headers_msg("text/plain")) == [] and local_reply.phase is Phase.DONE
    assert watch.unclaimed == 2
    assert sum("another epp process's token" in r.getMessage() for r in caplog.records) == 1


def test_a_routing_stream_that_ends_before_its_response_is_released_and_not_claimable() -> None:
    watch = ResponseWatch()
    stream, _, token, slot = routed(watch)
    stream.close()
    assert stream._director.table.inflight_requests[slot] == 0
    observer = ObservingStream(watch)
    observer.process(observer_headers(token))
    assert observer.phase is Phase.DONE and watch.unobserved == 0


def test_a_rewritten_model_asks_for_the_body_and_puts_the_name_back_itself() -> None:
    watch = ResponseWatch()
    stream, _, token, slot = routed(watch, {"x-gateway-model-name-rewrite": "m-canary"})
    assert token == ""  # nothing for an observer: the routing stream needs the body to mutate it
    (answer,) = stream.process(response_headers_msg("application/json"))
    assert answer.mode_override.response_body_mode == 1  # STREAMED
    assert list(answer.response_headers.response.header_mutation.remove_headers) == ["content-length"]
    (body,) = stream.process(response_body_msg(b'{"model":"m-canary","x":1}', end_of_stream=True))
    assert body.response_body.response.body_mutation.body == b'{"model":"m","x":1}'
    assert stream._director.table.inflight_requests[slot] == 0
