"""The gRPC servicer over a real socket on 127.0.0.1: malformed messages and idle streams."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from epp.datastore.table import EndpointTable
from epp.director import Director
from epp.extproc.core import ExtProcStream
from epp.extproc.observing import OBSERVE_HEADER, ObservingStream, ResponseWatch
from epp.extproc.servicer import ExtProcServicer
from epp.requests.parsers import openai_parser
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from tests.support.extproc import (
    BUFFERED,
    body_msg,
    headers_msg,
    make_table,
    response_body_msg,
    response_headers_msg,
    set_headers,
)
from tests.support.least_queue import LeastQueueScheduler

Start = Callable[..., Awaitable["Server"]]
METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


class Server:
    def __init__(self, table: EndpointTable, idle_timeout: float, watch: ResponseWatch | None = None) -> None:
        director = Director(table, LeastQueueScheduler(seed=1))
        self.servicer = ExtProcServicer(
            lambda: ExtProcStream(director, openai_parser, watch=watch),
            idle_timeout=idle_timeout,
            observing_stream=(lambda: ObservingStream(watch)) if watch is not None else None,
        )
        self.server = grpc.aio.server()
        pb_grpc.add_ExternalProcessorServicer_to_server(self.servicer, self.server)  # type: ignore[no-untyped-call]
        self.port = self.server.add_insecure_port("127.0.0.1:0")


@pytest.fixture
async def serve() -> AsyncIterator[Start]:
    servers: list[Server] = []

    async def start(table: EndpointTable, idle_timeout: float = 0.0, watch: ResponseWatch | None = None) -> Server:
        server = Server(table, idle_timeout, watch)
        await server.server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.server.stop(None)


async def test_malformed_message_closes_the_stream_with_one_log_line(
    serve: Start, caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve(make_table("10.0.0.1:8000"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        process = channel.stream_stream(METHOD)
        for _ in range(3):

            async def garbage() -> AsyncIterator[bytes]:
                yield b"\xff\xff\xff\xff"

            with caplog.at_level(logging.INFO), pytest.raises(grpc.aio.AioRpcError) as raised:
                async for _response in process(garbage()):
                    pass
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(records) == 3, [r.getMessage() for r in records]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in records)
    assert server.servicer.streams_in_flight == 0


async def test_idle_stream_is_closed_and_its_pick_released(serve: Start) -> None:
    table = make_table("10.0.0.1:8000")
    server = await serve(table, idle_timeout=0.3)
    release = asyncio.Event()

    async def header_only_then_silence() -> AsyncIterator[pb.ProcessingRequest]:
        yield headers_msg(end_of_stream=True)
        await release.wait()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)  # type: ignore[no-untyped-call]
        started = time.monotonic()
        call = stub.Process(header_only_then_silence())
        first = await asyncio.wait_for(call.read(), 5)
        assert first.HasField("request_headers")
        assert table.inflight_requests.sum() == 1
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await asyncio.wait_for(call.read(), 5)
        release.set()
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.25 < time.monotonic() - started < 3
    assert table.inflight_requests.sum() == 0
    assert server.servicer.streams_in_flight == 0


async def test_headers_without_body_are_not_held_forever(serve: Start) -> None:
    server = await serve(make_table("10.0.0.1:8000"), idle_timeout=0.2)
    release = asyncio.Event()

    async def headers_then_silence() -> AsyncIterator[pb.ProcessingRequest]:
        yield headers_msg()
        await release.wait()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)  # type: ignore[no-untyped-call]
        call = stub.Process(headers_then_silence())
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await asyncio.wait_for(call.read(), 5)
        release.set()
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_stream_that_keeps_talking_is_not_idle(serve: Start) -> None:
    server = await serve(make_table("10.0.0.1:8000"), idle_timeout=0.3)
    body = b'{"model":"m","prompt":"hello world"}'

    async def slow_body() -> AsyncIterator[pb.ProcessingRequest]:
        yield headers_msg()
        for index in range(len(body) // 6):  # six gaps of 0.1 s: 0.6 s in all, each well under the timeout
            await asyncio.sleep(0.1)
            yield body_msg(body[index * 6 : index * 6 + 6], end_of_stream=False)
        yield body_msg(body[len(body) // 6 * 6 :], end_of_stream=True)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)  # type: ignore[no-untyped-call]
        responses = [response async for response in stub.Process(slow_body())]
    assert [r.WhichOneof("response") for r in responses] == ["request_headers", "request_body"]


async def test_a_finished_exchange_ends_the_stream_without_waiting_for_the_client(serve: Start) -> None:
    """Envoy ends each stream with END_STREAM and an immediate RST_STREAM: a read still waiting when the reset
    lands leaks a native batch in grpcio's asyncio server, so once the response is complete the servicer
    sends the OK status itself instead of reading on."""
    table = make_table("10.0.0.1:8000")
    server = await serve(table)
    release = asyncio.Event()

    async def responses(call: Any) -> list[pb.ProcessingResponse]:
        return [response async for response in call]

    async def whole_exchange_then_silence() -> AsyncIterator[pb.ProcessingRequest]:
        yield headers_msg()
        yield body_msg(b'{"model":"m","prompt":"hello"}')
        yield response_headers_msg("application/json")
        yield response_body_msg(b'{"usage":{"prompt_tokens":1,"completion_tokens":1}}', end_of_stream=True)
        await release.wait()  # never half-closes, as Envoy until it resets the stream

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)  # type: ignore[no-untyped-call]
        call = stub.Process(whole_exchange_then_silence())
        kinds = [response.WhichOneof("response") for response in await asyncio.wait_for(responses(call), 5)]
        code = await asyncio.wait_for(call.code(), 5)
        release.set()
    assert kinds == ["request_headers", "request_body", "response_headers", "response_body"]
    assert code == grpc.StatusCode.OK
    assert table.inflight_requests.sum() == 0
    assert server.servicer.streams_in_flight == 0


def observing(token: str) -> pb.ProcessingRequest:
    message = headers_msg({OBSERVE_HEADER: token})
    message.observability_mode = True
    return message


async def test_an_observing_stream_is_refused_where_no_observer_is_configured(serve: Start) -> None:
    server = await serve(make_table("10.0.0.1:8000"))

    async def one() -> AsyncIterator[pb.ProcessingRequest]:
        yield observing("t")

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in stub.Process(one()):
                pass
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert server.servicer.streams_in_flight == 0


async def test_two_streams_route_and_observe_one_request(serve: Start) -> None:
    """The routing stream answers and ends at the response headers; the observing stream answers nothing and
    ends with OK at the response's end, releasing the pick."""
    table = make_table("10.0.0.1:8000")
    server = await serve(table, watch=ResponseWatch())
    token = asyncio.get_running_loop().create_future()
    observed = asyncio.Event()

    async def routing() -> AsyncIterator[pb.ProcessingRequest]:
        yield headers_msg(mode=BUFFERED, response_mode=0)
        yield body_msg(b'{"model":"m","prompt":"hello"}')
        await observed.wait()
        yield response_headers_msg("text/event-stream")

    async def observing_side() -> AsyncIterator[pb.ProcessingRequest]:
        yield observing(await token)
        observed.set()
        yield response_headers_msg("text/event-stream")
        yield response_body_msg(b"data: [DONE]\n\n", end_of_stream=True)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)  # type: ignore[no-untyped-call]
        observer_call = stub.Process(observing_side())
        kinds = []
        async for response in stub.Process(routing()):
            kinds.append(response.WhichOneof("response"))
            if kinds == ["request_headers", "request_body"]:
                token.set_result(set_headers(response)[OBSERVE_HEADER])
        assert await asyncio.wait_for(observer_call.code(), 5) == grpc.StatusCode.OK
        assert [r async for r in observer_call] == []
    assert kinds == ["request_headers", "request_body", "response_headers"]
    assert table.inflight_requests.sum() == 0
    assert server.servicer.streams_in_flight == 0
