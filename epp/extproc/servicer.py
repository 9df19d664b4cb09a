"""The gRPC edge of the protocol core: pumps each stream's messages through an ExtProcStream."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from epp.errors import EppError
from epp.extproc.core import ExtProcStream
from epp.flowcontrol.controller import FlowController
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

log = logging.getLogger("epp.extproc")


class ExtProcServicer(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(
        self,
        new_stream: Callable[[], ExtProcStream],
        flow: FlowController[list[pb.ProcessingResponse]] | None = None,
    ) -> None:
        self._new_stream = new_stream
        self._flow = flow
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
                responses = stream.process(message)
                if stream.waiting is not None:
                    responses = await self._wait_turn(stream)
                for response in responses:
                    yield response
                stream.after_send()
        finally:
            self.streams_in_flight -= 1
            stream.close()

    async def _wait_turn(self, stream: ExtProcStream) -> list[pb.ProcessingResponse]:
        assert self._flow is not None and stream.waiting is not None, "flow control is not configured"
        fairness_id, priority, size = stream.waiting
        try:
            return await self._flow.admit(fairness_id, priority, size, stream.resume)
        except EppError as error:
            return stream.reject(error)
