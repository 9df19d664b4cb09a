"""The response half of an ext_proc stream: the response headers and body the routing stream answers, or that an
observing stream hands it (epp/extproc/observing.py), and the pick's release at the response's end.

`ResponsePhase` is the base of `ExtProcStream` (epp/extproc/core.py, the request half); it holds only what the
response needs.
"""

from __future__ import annotations

import time

from epp.director import Decision, Director
from epp.extproc.messages import NO_BODY, STREAMED, header_value, read_served, set_header
from epp.extproc.observing import ResponseWatch
from epp.extproc.phases import Phase, Responses
from epp.extproc.reporting import StreamObserver, log_completed
from epp.extproc.response_body import ResponseBody
from epp.tracing import RequestTrace
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb


class ResponsePhase:
    __slots__ = (
        "_body_chunks",
        "_decision",
        "_director",
        "_observed",
        "_observer",
        "_phase",
        "_request_id",
        "_response",
        "_response_mode",
        "_rewrite",
        "_started",
        "_token",
        "_trace",
        "_watch",
        "served_endpoint",
    )
    _body_chunks: list[bytes]
    _decision: Decision | None
    _director: Director
    #: an observing stream claimed this stream's response (observing.py): releasing the pick is its job
    _observed: bool
    _observer: StreamObserver | None
    _phase: Phase
    _request_id: str
    _response: ResponseBody | None
    _response_mode: int
    #: (upstream, client) `"model":"..."` spellings to swap in the response body
    _rewrite: tuple[bytes, bytes] | None
    _started: float
    #: the token an observing stream claims this stream by ("": none expected)
    _token: str
    _trace: RequestTrace | None
    #: where a routing stream with response_body_mode NONE waits for its observing stream
    _watch: ResponseWatch | None
    served_endpoint: str

    def observed_end(self) -> None:
        """The response is over for this stream (or the observing stream that claimed it ended)."""
        self._finish()
        self._decision = None
        self._response = None

    def mark_observed(self) -> None:
        self._observed = True

    def observe(self, kind: str | None, message: pb.ProcessingRequest) -> bool:
        """A response message the observing stream that claimed this pick was sent; True once it is complete."""
        if kind == "response_headers":
            self.served_endpoint = read_served(message) or self.served_endpoint
            return self._start_response(message.response_headers, NO_BODY)
        if kind == "response_body":
            self._take_chunk(message.response_body)
            return message.response_body.end_of_stream
        if kind == "response_trailers":
            self._finish()
            return True
        return False

    def _on_response_headers(self, headers: pb.HttpHeaders) -> Responses:
        response = pb.ProcessingResponse(response_headers=pb.HeadersResponse())
        added = self._decision.result.response_headers if self._decision is not None else None
        if added:  # e.g. x-session-token from session-affinity-scorer
            mutation = response.response_headers.response.header_mutation
            for key, value in added.items():
                set_header(mutation, key, value)
        watch = self._watch
        if self._token and watch is not None:
            if self._observed or not watch.observers_absent:  # an observing stream follows it (observing.py)
                self._phase = Phase.DONE
                return [response]
            watch.drop(self._token, warn=True)  # Envoy has no observing filter: complete at this stream's end
            self._token = ""
        mode = self._response_mode
        if mode == NO_BODY and self._rewrite is not None:  # the model name must be put back: ask for the body,
            response.mode_override.response_body_mode = mode = self._response_mode = STREAMED
            response.response_headers.response.header_mutation.remove_headers.append("content-length")  # resized
        self._phase = Phase.RESPONSE_BODY
        if self._start_response(headers, mode):
            self._phase = Phase.DONE
        return [response]

    def _start_response(self, headers: pb.HttpHeaders, mode: int) -> bool:
        """Read the response headers; True when the response ends with them (then the pick is released)."""
        sse = "text/event-stream" in (header_value(headers, "content-type") or "")
        streaming = sse or (self._decision is not None and self._decision.request.stream)
        rewrite = self._rewrite
        self._response = ResponseBody(mode, sse, rewrite, rewrite is not None and not streaming)
        if headers.end_of_stream:
            self._finish()
        return headers.end_of_stream

    def _on_response_body(self, body: pb.HttpBody) -> Responses:
        self._phase = Phase.DONE if body.end_of_stream else Phase.RESPONSE_BODY
        return self._take_chunk(body)

    def _take_chunk(self, body: pb.HttpBody) -> Responses:
        chunk = body.body
        end = body.end_of_stream
        response = self._response
        if response is None:  # no response headers: Envoy with response_header_mode SKIP
            response = self._response = ResponseBody(self._response_mode, False, self._rewrite, False)
        if response.size == 0 and self._decision is not None and (chunk or end):
            self._director.first_chunk(self._decision, response.sse)
            if response.sse and self._observer is not None:
                self._observer.first_response_chunk(self._decision, time.perf_counter() - self._started)
        elif chunk and response.sse and self._decision is not None:
            self._director.response_chunk(self._decision)
        responses = response.answer(chunk, end)
        if end:
            self._finish()
        return responses

    def _finish(self) -> None:
        """The response ended, or the stream did: close the trace and release the pick, each once."""
        if self._trace is not None:
            self._trace.end()
            self._trace = None
        self._body_chunks = []
        decision = self._decision
        if decision is None or decision.released:
            return
        response = self._response
        usage = response.usage() if response is not None else None
        response_bytes = response.size if response is not None else 0
        self._director.complete(decision, usage)
        log_completed(self._request_id, response_bytes, usage)
        if self._observer is not None:
            self._observer.completed(decision, usage, response_bytes, time.perf_counter() - self._started)
