"""Envoy's ext_proc messages built by hand, and a protocol core wired to a scheduler, for tests of the core."""

from __future__ import annotations

import itertools

import numpy as np

from epp.datastore.table import Endpoint, EndpointTable, SlotArray
from epp.director import Director
from epp.extproc.core import ExtProcStream
from epp.requests.parsers import openai_parser
from epp.scheduling.types import LLMRequest, ProfileResult, SchedulingError, SchedulingResult
from epp_pb.envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from tests.support.least_queue import LeastQueueScheduler

BODY = b'{"model":"m","prompt":"hello world","max_tokens":3}'
FULL_DUPLEX = mode_pb.ProcessingMode.FULL_DUPLEX_STREAMED
BUFFERED = mode_pb.ProcessingMode.BUFFERED


def headers_msg(
    headers: dict[str, str] | None = None,
    end_of_stream: bool = False,
    mode: int | None = None,
    response_mode: int | None = None,
    subset: list[object] | None = None,
) -> pb.ProcessingRequest:
    message = pb.ProcessingRequest()
    all_headers = {":path": "/v1/completions", ":method": "POST", **(headers or {})}
    for key, value in all_headers.items():
        message.request_headers.headers.headers.add(key=key, raw_value=value.encode())
    message.request_headers.end_of_stream = end_of_stream
    if mode is not None:
        message.protocol_config.request_body_mode = mode  # type: ignore[assignment]
        message.protocol_config.response_body_mode = response_mode if response_mode is not None else mode  # type: ignore[assignment]
    if subset is not None:
        hint = message.metadata_context.filter_metadata["envoy.lb.subset_hint"]
        values = hint.fields["x-gateway-destination-endpoint-subset"].list_value
        for item in subset:
            if isinstance(item, str):
                values.values.add().string_value = item
            else:
                values.values.add().number_value = float(item)  # type: ignore[arg-type]
    return message


def body_msg(data: bytes, end_of_stream: bool = True) -> pb.ProcessingRequest:
    message = pb.ProcessingRequest()
    message.request_body.body = data
    message.request_body.end_of_stream = end_of_stream
    return message


def response_headers_msg(content_type: str, served: str = "") -> pb.ProcessingRequest:
    message = pb.ProcessingRequest()
    message.response_headers.headers.headers.add(key=":status", raw_value=b"200")
    message.response_headers.headers.headers.add(key="content-type", raw_value=content_type.encode())
    if served:
        lb = message.metadata_context.filter_metadata["envoy.lb"]
        lb.fields["x-gateway-destination-endpoint-served"].string_value = served
    return message


def response_body_msg(data: bytes, end_of_stream: bool) -> pb.ProcessingRequest:
    message = pb.ProcessingRequest()
    message.response_body.body = data
    message.response_body.end_of_stream = end_of_stream
    return message


def set_headers(response: pb.ProcessingResponse) -> dict[str, str]:
    phase = response.WhichOneof("response")
    common = getattr(response, phase).response
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


def make_table(*addresses: str) -> EndpointTable:
    table = EndpointTable(64)
    for address in addresses:
        host, port = address.rsplit(":", 1)
        table.add(Endpoint(host.strip("[]"), int(port)))
    return table


class FixedScheduler:
    """Returns the given hostports in order (a picker with maxNumOfEndpoints > 1)."""

    def __init__(self, *hostports: str, fail: bool = False) -> None:
        self.hostports = hostports
        self.fail = fail
        self.seen: list[LLMRequest] = []

    def schedule(self, request: LLMRequest, table: EndpointTable, candidates: SlotArray) -> SchedulingResult:
        self.seen.append(request)
        if self.fail:
            raise SchedulingError("no endpoints available for the given request")
        slots = np.array([table.slot_of_hostport(h) for h in self.hostports], dtype=np.intp)
        return SchedulingResult({"default": ProfileResult(slots)}, "default")


def stream_for(table: EndpointTable, scheduler: object | None = None, parser: object = openai_parser) -> ExtProcStream:
    director = Director(table, scheduler or LeastQueueScheduler(seed=1))  # type: ignore[arg-type]
    return ExtProcStream(director, parser)  # type: ignore[arg-type]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` in pieces at `cuts` (clipped to its length; never no piece)."""
    edges = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(edges)] or [b""]
