"""The gRPC edge of the protocol core: pumps each stream's messages through an ExtProcStream."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from epp.extproc.core import ExtProcStream
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

log = logging.getLogger("epp.extproc")


class ExtProcServicer(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, new_stream: Callable[[], ExtProcStream]) -> None:
        self._new_stream = new_stream
        self.streams_in_flight = 0
        self.streams_total = 0

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: Any
    ) -> AsyncIterator[pb.ProcessingResponse]:
        stream = self._new_stream()
        self.streams_in_flight += 1
        self.streams_total += 1
        try:
            async for message in request_iterator:
                for response in stream.process(message):
                    yield response
        finally:
            self.streams_in_flight -= 1
            stream.close()
