"""A burst of ext_proc streams that arrives while the event loop is busy: every stream is served.

gRPC core holds calls the Python server has not taken yet; with its defaults it ends the newest past 1,000
(all past 3,000) with "Too many pending requests for this server", which Envoy turns into a 500. 10,000 slow clients
opening at once made exactly that happen to ordinary requests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc

from epp.servers import extproc_server
from epp.settings import ServingSettings
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

BURST = 4_000  # past gRPC's hard default of 3,000 pending calls


class Echo(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: Any
    ) -> AsyncIterator[pb.ProcessingResponse]:
        async for _ in request_iterator:
            yield pb.ProcessingResponse(request_headers=pb.HeadersResponse())


async def open_streams(port: int, sent: threading.Event) -> list[str]:
    """BURST streams on one connection, each sending request headers; how each ended: "answered", a gRPC status
    code name, or "no answer" within the wait."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)  # type: ignore[no-untyped-call]
        calls = [stub.Process() for _ in range(BURST)]
        writes = [
            asyncio.ensure_future(call.write(pb.ProcessingRequest(request_headers=pb.HttpHeaders()))) for call in calls
        ]
        await asyncio.wait(writes, timeout=15)
        sent.set()

        async def outcome(call: Any) -> str:
            try:
                await asyncio.wait_for(call.read(), 20)
                return "answered"
            except grpc.aio.AioRpcError as error:
                return str(error.code().name)
            except TimeoutError:
                return "no answer"
            finally:
                call.cancel()

        return list(await asyncio.gather(*(outcome(call) for call in calls)))


async def test_a_burst_of_streams_while_the_loop_is_busy_is_served_whole() -> None:
    server = extproc_server(ServingSettings(secure_serving=False))
    pb_grpc.add_ExternalProcessorServicer_to_server(Echo(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    sent = threading.Event()
    outcomes: list[list[str]] = []
    client = threading.Thread(target=lambda: outcomes.append(asyncio.run(open_streams(port, sent))), daemon=True)
    try:
        client.start()
        # the serving loop is stuck (as on a machine 10x oversubscribed) while every stream arrives in core
        sent.wait(30)
        time.sleep(1.0)
        await asyncio.to_thread(client.join, 90)
    finally:
        await server.stop(None)
    assert outcomes, "the client did not finish"
    assert Counter(outcomes[0]) == {"answered": BURST}
