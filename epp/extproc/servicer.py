"""The gRPC edge of the protocol core: pumps each stream's messages through an ExtProcStream.

A stream that sends no message for `idle_timeout` seconds (not counting a wait in flow control) is closed
with DEADLINE_EXCEEDED, and one whose message does not parse with INVALID_ARGUMENT; either way with one log
line, and `ExtProcStream.close()` releases its pick.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError

from epp.errors import EppError
from epp.extproc.core import ExtProcStream
from epp.extproc.phases import Phase, Responses, Wait
from epp.flowcontrol.controller import FlowController
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

log = logging.getLogger("epp.extproc")

#: phases after which no message is expected: the servicer returns (gRPC sends the OK status) instead of
#: reading on. Envoy ends every ext_proc stream with END_STREAM and an immediate RST_STREAM; a read still
#: waiting when that reset lands leaked its native batch in grpcio's asyncio server (about 100 bytes, for
#: most streams: the soak's RSS grew ~0.7 MB a minute at 73 requests/s), and the reset then also made the
#: final status fail. Returning first leaves nothing in flight when the reset comes.
FINISHED = frozenset({Phase.DONE, Phase.CLOSED})


class UnsupportedStream(Exception):
    """A stream this server does not serve (an observing one where there is no observer)."""


class ProcessingStream(Protocol):
    """One stream's protocol state machine: the EPP's `ExtProcStream`, or body-based routing's."""

    @property
    def phase(self) -> Phase: ...

    def process(self, message: pb.ProcessingRequest) -> Responses | Wait: ...

    def after_send(self) -> None: ...

    def close(self) -> None: ...


class IdleWatch:
    """Cancels the current task once `timeout` seconds pass without `touch()` (and while not `paused`).

    One timer per stream, re-armed only when it fires: a message costs one clock read."""

    __slots__ = ("_handle", "_loop", "_task", "expired", "last", "paused", "timeout")

    def __init__(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "IdleWatch needs a task to cancel"
        self._task = task
        self.timeout = timeout
        self.last = self._loop.time()
        self.paused = False
        self.expired = False
        self._handle = self._loop.call_later(timeout, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def _check(self) -> None:
        quiet = self._loop.time() - self.last
        if self.paused or quiet < self.timeout:
            self._handle = self._loop.call_later(self.timeout - quiet if not self.paused else self.timeout, self._check)
            return
        self.expired = True
        self._task.cancel()

    def stop(self) -> None:
        self._handle.cancel()


class ExtProcServicer(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(
        self,
        new_stream: Callable[[], ProcessingStream],
        flow: FlowController[list[pb.ProcessingResponse]] | None = None,
        idle_timeout: float = 0.0,
        observing_stream: Callable[[], ProcessingStream] | None = None,
    ) -> None:
        self._new_stream = new_stream
        #: the stream for an ext_proc filter in observability_mode (epp/extproc/observing.py); None: refused
        self._observing_stream = observing_stream
        self._flow = flow
        #: seconds without a message after which a stream is closed; 0 = never
        self.idle_timeout = idle_timeout
        self.streams_in_flight = 0
        self.streams_total = 0

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: Any
    ) -> AsyncIterator[pb.ProcessingResponse]:
        stream: ProcessingStream | None = None
        self.streams_in_flight += 1
        self.streams_total += 1
        watch = IdleWatch(self.idle_timeout) if self.idle_timeout > 0 else None
        ended = False

        def end() -> None:
            nonlocal ended
            ended = True
            if watch is not None:
                watch.stop()
            self.streams_in_flight -= 1
            if stream is not None:
                stream.close()

        try:
            try:
                async for message in request_iterator:
                    if watch is not None:
                        watch.touch()
                    if stream is None:
                        stream = self._open(message)
                    outcome = stream.process(message)
                    responses = await self._wait_turn(stream, outcome, watch) if isinstance(outcome, Wait) else outcome
                    for response in responses:
                        yield response
                    stream.after_send()
                    if stream.phase in FINISHED:
                        break  # see FINISHED
            except DecodeError as exc:
                log.warning("ext_proc stream closed: a message is not a ProcessingRequest (%s)", exc)
                end()  # released before the client hears the stream is over
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed ProcessingRequest: {exc}")
            except UnsupportedStream as exc:
                log.warning("ext_proc stream refused: %s", exc)
                end()
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, str(exc))
            except asyncio.CancelledError:
                if watch is None or not watch.expired:
                    raise
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                phase = stream.phase.value if stream is not None else "waiting for the first message"
                log.info("ext_proc stream closed: no message for %gs (%s)", watch.timeout, phase)
                idle = f"no ext_proc message for {watch.timeout:g}s (--stream-idle-timeout)"
                end()  # released before the client hears the stream is over
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, idle)
        finally:
            if not ended:
                end()

    def _open(self, first: pb.ProcessingRequest) -> ProcessingStream:
        if not first.observability_mode:
            return self._new_stream()
        if self._observing_stream is None:
            raise UnsupportedStream("this ext_proc server does not take streams in observability_mode")
        return self._observing_stream()

    async def _wait_turn(self, stream: ProcessingStream, wait: Wait, watch: IdleWatch | None) -> Responses:
        if self._flow is None:
            raise RuntimeError("an ext_proc stream asked to wait in flow control, but flow control is not configured")
        if not isinstance(stream, ExtProcStream):
            raise RuntimeError("only the EPP's ext_proc streams wait in flow control")
        if watch is not None:
            watch.paused = True  # the queue has its own time limits
        try:
            return await self._flow.admit(wait.fairness_id, wait.priority, wait.size, stream.resume)
        except EppError as error:
            return stream.refuse(error)
        finally:
            if watch is not None:
                watch.paused = False
                watch.touch()
