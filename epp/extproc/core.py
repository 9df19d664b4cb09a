"""The ext_proc protocol core: one `ExtProcStream` per gRPC stream (= one HTTP request).

Sans-I/O: `process(message)` takes one ProcessingRequest and returns the ProcessingResponses to send, in
order, or a `Wait` when the request must queue in flow control (then `resume()` or `refuse(error)` answers).
The servicer only pumps messages through it, calls `after_send()` once a message's responses are written and
`close()` when the stream ends. Pre-request hooks the pick deferred (the prefix index insert) run in
`Director.run_deferred_hooks`, which `after_send()` calls; a stream that ends first has them run by
`Director.complete`, before the completion hooks.

Modes (from `protocol_config` on the first message; Envoy without it is assumed to be configured as
the reference expects, FULL_DUPLEX_STREAMED both ways):
- FULL_DUPLEX_STREAMED: the request-headers response is held until the body is complete, then the
  headers response (carrying the pick) and the body as streamed chunks of ≤ 62,000 bytes are sent.
- BUFFERED: headers are answered at once; the single body message gets the pick as a header mutation.
- no body (headers with end_of_stream, or request_body_mode NONE): the pick goes on the headers response.
The response half (response headers and body, the release at the end): epp/extproc/response_phase.py.

Message order (epp/extproc/phases.py): `Phase` is where a stream stands and `LEGAL_IN` which message kinds
each phase accepts. A message out of order (a second request, a body before its headers, the response before
the request), or one that carries no request kind this protocol defines, is answered with an
ImmediateResponse 400 and releases the stream's pick; after any ImmediateResponse the
stream ignores what still arrives (Envoy may have sent body chunks before it saw the answer). A stream
holds at most one pick, released exactly once: when the response ends, on an out-of-order message, or on
`close()`.
"""

from __future__ import annotations

import time
import uuid

from epp.director import Decision, Director, Prepared
from epp.errors import EppError
from epp.extproc.messages import (
    BUFFERED,
    FULL_DUPLEX,
    NO_BODY,
    REQUEST_ID_HEADER,
    immediate_response,
    picked_response,
    read_served,
    read_subset,
    set_header,
    streamed_chunks,
    unsupported_body_mode,
)
from epp.extproc.observing import OBSERVE_HEADER, ResponseWatch
from epp.extproc.phases import LEGAL_IN, Phase, Responses, Wait
from epp.extproc.reporting import StreamObserver, log_out_of_order, log_rejected, log_routed
from epp.extproc.response_phase import ResponsePhase
from epp.requests.openai import ParsedBody, request_path
from epp.requests.parsers import BodyParser
from epp.tracing import RequestTrace, RequestTracer
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb

#: default of --max-request-body-bytes: a longer request body is answered 413 and its bytes dropped
DEFAULT_MAX_REQUEST_BODY = 64 * 1024 * 1024

_SUPPORTED_REQUEST_MODES = {FULL_DUPLEX: "FULL_DUPLEX_STREAMED", BUFFERED: "BUFFERED", NO_BODY: "NONE"}


class ExtProcStream(ResponsePhase):
    __slots__ = (
        "_body_bytes",
        "_emit_scores",
        "_ended_with_trailers",
        "_flow_control",
        "_headers",
        "_id_generated",
        "_max_body",
        "_parser",
        "_prepared",
        "_raw",
        "_request_mode",
        "_request_seconds",
        "_response_seconds",
        "_subset",
        "_tracer",
    )

    def __init__(
        self,
        director: Director,
        parser: BodyParser,
        observer: StreamObserver | None = None,
        flow_control: bool = False,
        tracer: RequestTracer | None = None,
        max_body_bytes: int = DEFAULT_MAX_REQUEST_BODY,
        emit_scores: bool = False,
        watch: ResponseWatch | None = None,
    ) -> None:
        self._director = director
        #: where a routing stream with response_body_mode NONE waits for its observing stream (observing.py)
        self._watch = watch
        self._token = ""
        self._observed = False
        #: add the primary profile's scores to the envoy.lb metadata (the scheduler must trace its runs)
        self._emit_scores = emit_scores
        self._max_body = max_body_bytes
        self._phase = Phase.REQUEST_HEADERS
        self._tracer = tracer
        self._trace: RequestTrace | None = None
        self._flow_control = flow_control
        self._prepared: Prepared | None = None
        self._raw = b""
        self._ended_with_trailers = False
        self._parser = parser
        self._observer = observer
        self._headers: dict[str, str] = {}
        self._request_id = ""
        self._id_generated = False
        self._body_chunks: list[bytes] = []
        self._body_bytes = 0
        self._request_mode: int = FULL_DUPLEX
        self._response_mode: int = FULL_DUPLEX
        self._subset: list[str] | None = None
        self._decision = None
        self._rewrite = None
        self._response = None
        self._started = time.perf_counter()
        self._request_seconds = 0.0
        self._response_seconds = 0.0
        self.served_endpoint = ""

    # --- dispatch -------------------------------------------------------------------------------

    def process(self, message: pb.ProcessingRequest) -> Responses | Wait:
        started = time.perf_counter()
        kind = message.WhichOneof("request")
        responses = self._dispatch(kind, message)
        if kind is not None and kind.startswith("request"):
            self._request_seconds += time.perf_counter() - started
        else:
            self._response_seconds += time.perf_counter() - started
        return responses

    @property
    def phase(self) -> Phase:
        return self._phase

    def _dispatch(self, kind: str | None, message: pb.ProcessingRequest) -> Responses | Wait:
        if self._phase is Phase.CLOSED:
            return []
        if kind is None:
            return self._out_of_order("message without a request")
        if self._phase not in LEGAL_IN[kind]:
            return self._out_of_order(kind)
        if kind == "request_headers":
            if message.HasField("protocol_config"):
                self._request_mode = message.protocol_config.request_body_mode
                self._response_mode = message.protocol_config.response_body_mode
            self._subset = read_subset(message)
            return self._on_request_headers(message.request_headers)
        if kind == "request_body":
            return self._on_request_body(message.request_body)
        if kind == "response_headers":
            self.served_endpoint = read_served(message) or self.served_endpoint
            return self._on_response_headers(message.response_headers)
        if kind == "response_body":
            return self._on_response_body(message.response_body)
        if kind == "request_trailers":
            return self._on_request_trailers()
        if kind == "response_trailers":
            self._phase = Phase.DONE
            self._finish()
            return [pb.ProcessingResponse(response_trailers=pb.TrailersResponse())]
        return []

    def _out_of_order(self, kind: str) -> Responses:
        """A message the phase does not allow: one log line, the pick released, a 400."""
        log_out_of_order(kind, self._phase.value, self._request_id)
        self._finish()
        return self._reject(EppError("BadRequest", f"ext_proc {kind} out of order: the stream was {self._phase.value}"))

    def after_send(self) -> None:
        """The responses of the last message are written: run the pre-request hooks the pick deferred (such as
        the prefix index insert), off the request's latency."""
        decision = self._decision
        if decision is not None and decision.hooks_pending:
            started = time.perf_counter()
            self._director.run_deferred_hooks(decision)
            self._request_seconds += time.perf_counter() - started

    def close(self) -> None:
        """The gRPC stream ended; release the pick if the response never completed (client gone), and drop
        every buffer and the request (a large prompt must not outlive its stream). An observed stream's pick
        is the observing stream's to release (`observed_end`), and so is one whose observing stream is late
        (`ResponseWatch.park`)."""
        watch = self._watch
        parked = False
        if self._token and not self._observed and watch is not None:
            parked = watch.park(self._token)
        if not (self._observed or parked):
            self.observed_end()
        self._phase = Phase.CLOSED
        self._prepared = None
        self._raw = b""
        if self._observer is not None:
            self._observer.processing(self._request_seconds, self._response_seconds)

    # --- request phase ------------------------------------------------------------------------

    def _on_request_headers(self, headers: pb.HttpHeaders) -> Responses:
        store = self._headers
        for header in headers.headers.headers:  # Envoy sends keys lower-cased
            raw = header.raw_value
            store[header.key] = raw.decode("latin-1") if raw else header.value
        request_id = store.get(REQUEST_ID_HEADER)
        if not request_id:
            request_id = str(uuid.uuid4())
            store[REQUEST_ID_HEADER] = request_id
            self._id_generated = True
        self._request_id = request_id
        if self._tracer is not None:
            self._trace = self._tracer.begin(store)
        if self._request_mode not in _SUPPORTED_REQUEST_MODES:
            self._phase = Phase.CLOSED
            return [immediate_response(unsupported_body_mode(self._request_mode))]
        if headers.end_of_stream or self._request_mode == NO_BODY:
            if self._trace is not None:
                self._trace.start_orchestration()
            try:
                decision = self._director.decide_header_only(request_id, store, self._subset)
            except EppError as error:
                return self._reject(error)
            self._traced(decision)
            return [self._picked_response(decision, "request_headers")]
        self._phase = Phase.REQUEST_BODY
        length = store.get("content-length", "")
        if length.isdigit() and int(length) > self._max_body:
            return self._too_large()
        if self._request_mode == BUFFERED:
            response = pb.ProcessingResponse()
            response.request_headers.SetInParent()
            if self._id_generated:
                set_header(response.request_headers.response.header_mutation, REQUEST_ID_HEADER, request_id)
            return [response]
        return []

    def _on_request_body(self, body: pb.HttpBody) -> Responses | Wait:
        chunk = body.body
        self._body_bytes += len(chunk)
        if self._body_bytes > self._max_body:
            return self._too_large()
        self._body_chunks.append(chunk)
        if not body.end_of_stream:
            return []
        return self._route(ended_with_trailers=False)

    def _too_large(self) -> Responses:
        self._body_chunks = []
        return self._reject(EppError("PayloadTooLarge", f"request body larger than {self._max_body} bytes"))

    def _on_request_trailers(self) -> Responses | Wait:
        if self._phase is Phase.ROUTED:
            return [pb.ProcessingResponse(request_trailers=pb.TrailersResponse())]
        responses = self._route(ended_with_trailers=True)
        if isinstance(responses, Wait):
            return responses  # `resume()` adds the trailers response
        if responses and not responses[-1].HasField("immediate_response"):
            responses.append(pb.ProcessingResponse(request_trailers=pb.TrailersResponse()))
        return responses

    def _route(self, ended_with_trailers: bool) -> Responses | Wait:
        raw = self._body_chunks[0] if len(self._body_chunks) == 1 else b"".join(self._body_chunks)
        self._body_chunks = []
        parsed: ParsedBody | None = None
        if self._trace is not None:
            self._trace.start_orchestration()
        try:
            parsed = self._parser(raw, request_path(self._headers))
            prepared = self._director.prepare(
                self._request_id, self._headers, parsed, raw, self._subset, flow_control=self._flow_control
            )
        except EppError as error:
            model = parsed.model if parsed else ""
            return self._reject(error, model, self._headers.get("x-gateway-model-name-rewrite") or model)
        if self._flow_control:
            self._prepared, self._raw, self._ended_with_trailers = prepared, raw, ended_with_trailers
            self._phase = Phase.QUEUED
            request = prepared.request
            return Wait(request.fairness_id, request.priority, len(raw))
        return self._schedule(prepared, raw, ended_with_trailers)

    def resume(self) -> Responses:
        """The request's turn came in flow control: pick and answer."""
        prepared, raw = self._queued("resume()")
        responses = self._schedule(prepared, raw, self._ended_with_trailers)
        if self._ended_with_trailers and not responses[-1].HasField("immediate_response"):
            responses.append(pb.ProcessingResponse(request_trailers=pb.TrailersResponse()))
        return responses

    def refuse(self, error: EppError) -> Responses:
        """Flow control refused the waiting request (queue full, request expired): answer with `error`."""
        prepared, _ = self._queued("refuse()")
        return self._reject(error, prepared.request.model, prepared.request.target_model)

    def _queued(self, call: str) -> tuple[Prepared, bytes]:
        """The waiting request, taken out of the stream (only a stream that answered `Wait` has one)."""
        prepared, raw = self._prepared, self._raw
        if self._phase is not Phase.QUEUED or prepared is None:
            raise RuntimeError(f"ExtProcStream.{call} while {self._phase.value}: only a stream that answered Wait")
        self._prepared, self._raw = None, b""
        return prepared, raw

    def _reject(self, error: EppError, model: str = "", target: str = "") -> Responses:
        """Answer with an error: the request's metrics, trace and log line, then the ImmediateResponse."""
        if self._observer is not None:
            self._observer.failed(error, model, target)
        if self._trace is not None:
            self._trace.end_orchestration(target, 0, error.code)
        log_rejected(error, self._request_id)
        self._phase = Phase.CLOSED
        return [immediate_response(error)]

    def _schedule(self, prepared: Prepared, raw: bytes, ended_with_trailers: bool) -> Responses:
        try:
            decision = self._director.schedule(prepared)
        except EppError as error:
            return self._reject(error, prepared.request.model, prepared.request.target_model)
        self._traced(decision)
        request = decision.request
        if request.target_model != request.model:
            self._rewrite = (
                b'"model":"' + request.target_model.encode() + b'"',
                b'"model":"' + request.model.encode() + b'"',
            )
        if self._watch is not None and self._response_mode == NO_BODY and self._rewrite is None:
            self._token = decision.headers[OBSERVE_HEADER] = self._watch.register(self)
        body = raw if decision.new_body is None else decision.new_body
        if self._request_mode == BUFFERED:
            response = self._picked_response(decision, "request_body")
            if decision.new_body is not None:
                response.request_body.response.body_mutation.body = body
            return [response]
        responses = [self._picked_response(decision, "request_headers")]
        responses.extend(streamed_chunks(body, "request_body", end_of_stream=not ended_with_trailers))
        return responses

    def _traced(self, decision: Decision) -> None:
        """Close the orchestration span and carry the trace context upstream."""
        if self._trace is not None:
            request = decision.request
            decision.headers.update(self._trace.end_orchestration(request.target_model, request.priority))

    def _picked_response(self, decision: Decision, phase: str) -> pb.ProcessingResponse:
        assert self._decision is None, "a stream picks once (LEGAL_IN admits one request)"
        self._decision = decision
        self._phase = Phase.ROUTED
        if self._observer is not None:
            self._observer.picked(decision)
        log_routed(decision, self._request_id)
        generated_id = self._request_id if self._id_generated else None
        scored_hostports = self._director.table.hostports if self._emit_scores else None
        return picked_response(decision, phase, generated_id, scored_hostports)
