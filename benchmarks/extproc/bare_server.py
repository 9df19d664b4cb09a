"""The bare baseline: the least a grpc.aio ext_proc picker in FULL_DUPLEX_STREAMED (or BUFFERED) mode can do.

Holds the request-headers reply until the body ends, reads `model` with orjson, picks round-robin, sends
the destination header + metadata and echoes the body; echoes response chunks. No scheduling, no
accounting, no metrics: what our EPP adds on top of this is what the benchmark's ratio shows.
`python bare_server.py --port 9102 --backends 127.0.0.1:8001,127.0.0.1:8002`
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
import uvloop

from epp_pb.envoy.config.core.v3 import base_pb2 as core_pb
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

BUFFERED = 2


class BareServicer(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, backends: list[str]) -> None:
        self._next = itertools.cycle(backends).__next__

    def _pick(self, body: bytes, phase: str) -> pb.ProcessingResponse:
        orjson.loads(body)["model"]
        destination = self._next()
        common = pb.CommonResponse(clear_route_cache=True)
        option = common.header_mutation.set_headers.add()
        option.header.key = "x-gateway-destination-endpoint"
        option.header.raw_value = destination.encode()
        option.append_action = core_pb.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
        if phase == "headers":
            response = pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=common))
        else:
            response = pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))
        response.dynamic_metadata.fields["envoy.lb"].struct_value.fields[
            "x-gateway-destination-endpoint"
        ].string_value = destination
        return response

    async def Process(self, requests: AsyncIterator[pb.ProcessingRequest], context: Any) -> AsyncIterator[Any]:
        chunks: list[bytes] = []
        mode = 4
        async for message in requests:
            kind = message.WhichOneof("request")
            if kind == "request_headers":
                if message.HasField("protocol_config"):
                    mode = message.protocol_config.request_body_mode
                if mode == BUFFERED:
                    yield pb.ProcessingResponse(request_headers=pb.HeadersResponse())
            elif kind == "request_body":
                chunks.append(message.request_body.body)
                if message.request_body.end_of_stream:
                    body = b"".join(chunks)
                    if mode == BUFFERED:
                        yield self._pick(body, "body")
                        continue
                    yield self._pick(body, "headers")
                    for i in range(0, max(len(body), 1), 62_000):
                        response = pb.ProcessingResponse()
                        streamed = response.request_body.response.body_mutation.streamed_response
                        streamed.body = body[i : i + 62_000]
                        streamed.end_of_stream = i + 62_000 >= len(body)
                        yield response
            elif kind == "response_headers":
                yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())
            elif kind == "response_body":
                response = pb.ProcessingResponse()
                if mode == BUFFERED:
                    response.response_body.SetInParent()
                else:
                    streamed = response.response_body.response.body_mutation.streamed_response
                    streamed.body = message.response_body.body
                    streamed.end_of_stream = message.response_body.end_of_stream
                yield response
            elif kind == "request_trailers":
                yield pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
            elif kind == "response_trailers":
                yield pb.ProcessingResponse(response_trailers=pb.TrailersResponse())


async def serve(port: int, backends: list[str]) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(BareServicer(backends), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backends", required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.backends.split(",")))


if __name__ == "__main__":
    main()
