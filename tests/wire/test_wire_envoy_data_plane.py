"""Wire compatibility: requests encoded by envoy-data-plane (an implementation of Envoy's messages
independent of ours) against the real gRPC server; responses decoded by it too."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from envoy_data_plane.envoy.config.core.v3 import HeaderMap, HeaderValue, Metadata
from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import ProcessingModeBodySendMode
from envoy_data_plane.envoy.service.ext_proc.v3 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
    ProtocolConfiguration,
)
from envoy_data_plane.google.protobuf import ListValue, Struct, Value

from epp.datastore.table import Endpoint, EndpointTable
from epp.director import Director
from epp.extproc.core import ExtProcStream
from epp.extproc.servicer import ExtProcServicer
from epp.requests.parsers import openai_parser
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from tests.support.least_queue import LeastQueueScheduler

METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


@pytest.fixture
async def server_address() -> AsyncIterator[tuple[str, EndpointTable]]:
    table = EndpointTable(16)
    for i in (1, 2, 3):
        table.add(Endpoint(f"10.0.0.{i}", 8000))
    table.waiting_queue[table.slot_of_hostport("10.0.0.1:8000")] = 3
    table.waiting_queue[table.slot_of_hostport("10.0.0.3:8000")] = 10
    director = Director(table, LeastQueueScheduler(seed=0))
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(
        ExtProcServicer(lambda: ExtProcStream(director, openai_parser)), server
    )  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", table
    await server.stop(None)


async def exchange(address: str, requests: list[ProcessingRequest]) -> list[ProcessingResponse]:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(METHOD, request_serializer=bytes, response_deserializer=ProcessingResponse.parse)
        stream = call(iter(requests))
        return [response async for response in stream]


def headers(path: str = "/v1/completions", **extra: str) -> HttpHeaders:
    values = [HeaderValue(key=":path", raw_value=path.encode())]
    values += [HeaderValue(key=k.replace("_", "-"), raw_value=v.encode()) for k, v in extra.items()]
    return HttpHeaders(headers=HeaderMap(headers=values))


async def test_full_duplex_pick_decodes_with_envoy_data_plane(server_address: tuple[str, EndpointTable]) -> None:
    address, _ = server_address
    body = b'{"model":"m","prompt":"hello world"}'
    requests = [
        ProcessingRequest(
            request_headers=headers(x_request_id="rid"),
            protocol_config=ProtocolConfiguration(
                request_body_mode=ProcessingModeBodySendMode.FULL_DUPLEX_STREAMED,
                response_body_mode=ProcessingModeBodySendMode.FULL_DUPLEX_STREAMED,
            ),
        ),
        ProcessingRequest(request_body=HttpBody(body=body[:9], end_of_stream=False)),
        ProcessingRequest(request_body=HttpBody(body=body[9:], end_of_stream=True)),
    ]
    first, second = await exchange(address, requests)
    assert first.request_headers is not None and first.request_headers.response is not None
    common = first.request_headers.response
    assert common.clear_route_cache
    assert common.header_mutation is not None
    picked = {h.header.key: h.header.raw_value for h in common.header_mutation.set_headers if h.header}
    assert picked == {"x-gateway-destination-endpoint": b"10.0.0.2:8000"}
    assert first.dynamic_metadata is not None
    lb = first.dynamic_metadata.fields["envoy.lb"].struct_value
    assert lb is not None and lb.fields["x-gateway-destination-endpoint"].string_value == "10.0.0.2:8000"
    assert second.request_body is not None and second.request_body.response is not None
    mutation = second.request_body.response.body_mutation
    assert mutation is not None and mutation.streamed_response is not None
    assert mutation.streamed_response.body == body and mutation.streamed_response.end_of_stream


async def test_subset_hint_metadata_from_envoy_data_plane(server_address: tuple[str, EndpointTable]) -> None:
    address, _ = server_address
    hint = Struct(
        fields={
            "x-gateway-destination-endpoint-subset": Value(
                list_value=ListValue(values=[Value(string_value="10.0.0.3:8000")])
            )
        }
    )
    requests = [
        ProcessingRequest(
            request_headers=headers(x_request_id="rid"),
            metadata_context=Metadata(filter_metadata={"envoy.lb.subset_hint": hint}),
        ),
        ProcessingRequest(request_body=HttpBody(body=b'{"model":"m","prompt":"x"}', end_of_stream=True)),
    ]
    first, _ = await exchange(address, requests)
    assert first.request_headers is not None and first.request_headers.response is not None
    mutation = first.request_headers.response.header_mutation
    assert mutation is not None
    assert mutation.set_headers[0].header is not None
    assert mutation.set_headers[0].header.raw_value == b"10.0.0.3:8000"


async def test_error_is_immediate_response(server_address: tuple[str, EndpointTable]) -> None:
    address, _ = server_address
    requests = [
        ProcessingRequest(request_headers=headers(x_request_id="rid")),
        ProcessingRequest(request_body=HttpBody(body=b'{"prompt":"hello world"}', end_of_stream=True)),
    ]
    (response,) = await exchange(address, requests)
    immediate = response.immediate_response
    assert immediate is not None and immediate.status is not None
    assert int(immediate.status.code) == 400
    assert immediate.body == b"inference error: BadRequest - model not found in request body"
