"""The ext_proc protocol core: one `ExtProcStream` per gRPC stream (= one HTTP request).

Sans-I/O: `process(message)` takes one ProcessingRequest and returns the ProcessingResponses to send,
in order. The servicer only pumps messages through it and calls `close()` when the stream ends.

Modes (from `protocol_config` on the first message; Envoy without it is assumed to be configured as
the reference expects, FULL_DUPLEX_STREAMED both ways):
- FULL_DUPLEX_STREAMED: the request-headers response is held until the body is complete, then the
  headers response (carrying the pick) and the body as streamed chunks of ≤ 62,000 bytes are sent.
- BUFFERED: headers are answered at once; the single body message gets the pick as a header mutation.
- no body (headers with end_of_stream, or request_body_mode NONE): the pick goes on the headers response.
Response bodies: FULL_DUPLEX_STREAMED chunks are echoed as streamed responses at once; in BUFFERED and
STREAMED modes each body message is answered by its own BodyResponse.

Message order: `Phase` is where a stream stands and `LEGAL_IN` which message kinds each phase accepts. A
message out of order (a second request, a body before its headers, the response before the request) is
answered with an ImmediateResponse 400 and releases the stream's pick; after any ImmediateResponse the
stream ignores what still arrives (Envoy may have sent body chunks before it saw the answer). A stream
holds at most one pick, released exactly once: when the response ends, on an out-of-order message, or on
`close()`.
"""

from __future__ import annotations

import enum
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from epp.director import Decision, Director, Prepared
from epp.errors import EppError
from epp.observability.decisions import endpoint_scores
from epp.requests.openai import ParsedBody, parse_openai_body, request_path
from epp.requests.usage import SSEUsageScanner, usage_from_json
from epp.scheduling.types import SchedulingResult, Usage
from epp.tracing import RequestTrace, RequestTracer
from epp_pb.envoy.config.core.v3 import base_pb2 as core_pb
from epp_pb.envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb

log = logging.getLogger("epp.request")
VERBOSE_LEVEL = 15  # --v 3

BODY_CHUNK_LIMIT = 62_000
DESTINATION_HEADER = "x-gateway-destination-endpoint"
LB_NAMESPACE = "envoy.lb"
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
SERVED_KEY = "x-gateway-destination-endpoint-served"
#: with --emit-endpoint-scores: `envoy.lb` struct of every scored candidate's `ip:port` → its total score
SCORES_KEY = "x-gateway-destination-endpoint-scores"
REQUEST_ID_HEADER = "x-request-id"
#: non-streaming response bodies are kept (for usage) up to this size; larger ones are not parsed
MAX_USAGE_BODY = 8 * 1024 * 1024
#: default of --max-request-body-bytes: a longer request body is answered 413 and its bytes dropped
DEFAULT_MAX_REQUEST_BODY = 64 * 1024 * 1024

FULL_DUPLEX = mode_pb.ProcessingMode.FULL_DUPLEX_STREAMED
BUFFERED = mode_pb.ProcessingMode.BUFFERED
NO_BODY = mode_pb.ProcessingMode.NONE
_SUPPORTED_REQUEST_MODES = {FULL_DUPLEX: "FULL_DUPLEX_STREAMED", BUFFERED: "BUFFERED", NO_BODY: "NONE"}
#: response body modes in which every body message gets its own BodyResponse (no streamed_response)
_PER_CHUNK_RESPONSE_MODES = (BUFFERED, mode_pb.ProcessingMode.STREAMED, mode_pb.ProcessingMode.BUFFERED_PARTIAL)
_OVERWRITE = core_pb.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

BodyParser = Callable[[bytes, str], ParsedBody | None]


class Phase(enum.Enum):
    """Where a stream stands; the value reads in a log line ("... while <value>")."""

    REQUEST_HEADERS = "waiting for the request headers"
    REQUEST_BODY = "receiving the request body"
    #: the request waits in flow control (the servicer reads nothing meanwhile)
    QUEUED = "queued in flow control"
    ROUTED = "waiting for the response"
    RESPONSE_BODY = "receiving the response body"
    DONE = "the response is complete"
    #: an ImmediateResponse was sent: whatever still arrives is ignored
    CLOSED = "answered"


#: message kind → the phases it may arrive in (anything else is out of order)
LEGAL_IN: dict[str, frozenset[Phase]] = {
    "request_headers": frozenset({Phase.REQUEST_HEADERS}),
    "request_body": frozenset({Phase.REQUEST_BODY}),
    "request_trailers": frozenset({Phase.REQUEST_BODY, Phase.ROUTED}),
    # a response body or trailers without response headers: Envoy with response_header_mode SKIP
    "response_headers": frozenset({Phase.ROUTED}),
    "response_body": frozenset({Phase.ROUTED, Phase.RESPONSE_BODY}),
    "response_trailers": frozenset({Phase.ROUTED, Phase.RESPONSE_BODY}),
}


def openai_parser(raw: bytes, path: str) -> ParsedBody | None:
    return parse_openai_body(raw, path)


def passthrough_parser(raw: bytes, path: str) -> ParsedBody | None:
    return None


class StreamObserver(Protocol):
    """What the core reports for metrics; every method must be cheap."""

    def picked(self, decision: Decision) -> None: ...

    def failed(self, error: EppError, model: str, target_model: str) -> None: ...

    def completed(self, decision: Decision, usage: Usage | None, response_bytes: int, seconds: float) -> None: ...

    def first_response_chunk(self, decision: Decision, seconds: float) -> None: ...

    def processing(self, request_seconds: float, response_seconds: float) -> None: ...


class ExtProcStream:
    __slots__ = (
        "_body_bytes",
        "_body_chunks",
        "_buffer_response",
        "_decision",
        "_director",
        "_emit_scores",
        "_ended_with_trailers",
        "_flow_control",
        "_headers",
        "_id_generated",
        "_max_body",
        "_observer",
        "_parser",
        "_phase",
        "_prepared",
        "_raw",
        "_request_id",
        "_request_mode",
        "_request_seconds",
        "_response_bytes",
        "_response_chunks",
        "_response_mode",
        "_response_seconds",
        "_rewrite",
        "_sse",
        "_sse_scanner",
        "_started",
        "_subset",
        "_trace",
        "_tracer",
        "served_endpoint",
        "waiting",
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
    ) -> None:
        self._director = director
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
        #: set when the request must wait in flow control: (fairness id, priority, bytes); the caller then
        #: awaits its turn and calls `resume()` (or `reject(error)`) for the responses
        self.waiting: tuple[str, int, int] | None = None
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
        self._decision: Decision | None = None
        self._sse = False
        self._sse_scanner: SSEUsageScanner | None = None
        self._rewrite: tuple[bytes, bytes] | None = None
        self._buffer_response = False
        self._response_chunks: list[bytes] = []
        self._response_bytes = 0
        self._started = time.perf_counter()
        self._request_seconds = 0.0
        self._response_seconds = 0.0
        self.served_endpoint = ""

    # --- dispatch -------------------------------------------------------------------------------

    def process(self, message: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        self.after_send()  # work a pick deferred, if the caller has not run it yet
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

    def _dispatch(self, kind: str | None, message: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        if kind is None or self._phase is Phase.CLOSED:
            return []  # (a kind this protocol version does not know has no answer either)
        if self._phase not in LEGAL_IN[kind]:
            return self._out_of_order(kind)
        if kind == "request_headers":
            if message.HasField("protocol_config"):
                self._request_mode = message.protocol_config.request_body_mode
                self._response_mode = message.protocol_config.response_body_mode
            self._read_subset(message)
            return self._on_request_headers(message.request_headers)
        if kind == "request_body":
            return self._on_request_body(message.request_body)
        if kind == "response_headers":
            self._read_served(message)
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

    def _out_of_order(self, kind: str) -> list[pb.ProcessingResponse]:
        """A message the phase does not allow: one log line, the pick released, a 400."""
        log.warning(
            "ext_proc %s out of order (stream %s): answering 400",
            kind,
            self._phase.value,
            extra={"x-request-id": self._request_id},
        )
        self._finish()
        return self.reject(EppError("BadRequest", f"ext_proc {kind} out of order: the stream was {self._phase.value}"))

    def after_send(self) -> None:
        """The responses of the last message are on their way: run the work the pick deferred (pre-request
        hooks such as the prefix index insert), off the request's latency."""
        decision = self._decision
        if decision is not None and decision.hooks_pending:
            started = time.perf_counter()
            self._director.run_deferred_hooks(decision)
            self._request_seconds += time.perf_counter() - started

    def close(self) -> None:
        """The gRPC stream ended; release the pick if the response never completed (client gone), and drop
        every buffer and the request (a large prompt must not outlive its stream)."""
        self._finish()
        self._phase = Phase.CLOSED
        self._decision = self._prepared = self._sse_scanner = None
        self._raw = b""
        self._response_chunks = []
        if self._observer is not None:
            self._observer.processing(self._request_seconds, self._response_seconds)

    # --- request phase ------------------------------------------------------------------------

    def _on_request_headers(self, headers: pb.HttpHeaders) -> list[pb.ProcessingResponse]:
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
            # a mode newer than these protos is an int without a name (Name() raised ValueError on it)
            known = mode_pb.ProcessingMode.BodySendMode.values()
            send_mode = mode_pb.ProcessingMode.BodySendMode
            mode = send_mode.Name(self._request_mode) if self._request_mode in known else str(self._request_mode)
            return [
                self._immediate(
                    EppError(
                        "Internal",
                        f"ext_proc request_body_mode {mode} is"
                        " not supported; configure FULL_DUPLEX_STREAMED (reference) or BUFFERED",
                    )
                )
            ]
        if headers.end_of_stream or self._request_mode == NO_BODY:
            if self._trace is not None:
                self._trace.start_orchestration()
            try:
                decision = self._director.decide_header_only(request_id, store, self._subset)
            except EppError as error:
                return self.reject(error)
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

    def _on_request_body(self, body: pb.HttpBody) -> list[pb.ProcessingResponse]:
        chunk = body.body
        self._body_bytes += len(chunk)
        if self._body_bytes > self._max_body:
            return self._too_large()
        self._body_chunks.append(chunk)
        if not body.end_of_stream:
            return []
        return self._route(ended_with_trailers=False)

    def _too_large(self) -> list[pb.ProcessingResponse]:
        self._body_chunks = []
        return self.reject(EppError("PayloadTooLarge", f"request body larger than {self._max_body} bytes"))

    def _on_request_trailers(self) -> list[pb.ProcessingResponse]:
        if self._phase is Phase.ROUTED:
            return [pb.ProcessingResponse(request_trailers=pb.TrailersResponse())]
        responses = self._route(ended_with_trailers=True)
        if responses and not responses[-1].HasField("immediate_response"):
            responses.append(pb.ProcessingResponse(request_trailers=pb.TrailersResponse()))
        return responses

    def _route(self, ended_with_trailers: bool) -> list[pb.ProcessingResponse]:
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
            return self.reject(error, model, self._headers.get("x-gateway-model-name-rewrite") or model)
        if self._flow_control:
            self._prepared, self._raw, self._ended_with_trailers = prepared, raw, ended_with_trailers
            request = prepared.request
            self.waiting = (request.fairness_id, request.priority, len(raw))
            self._phase = Phase.QUEUED
            return []
        return self._schedule(prepared, raw, ended_with_trailers)

    def resume(self) -> list[pb.ProcessingResponse]:
        """The request's turn came in flow control: pick and answer."""
        prepared, raw = self._prepared, self._raw
        assert prepared is not None, "resume() without a waiting request"
        self._prepared, self._raw, self.waiting = None, b"", None
        responses = self._schedule(prepared, raw, self._ended_with_trailers)
        if self._ended_with_trailers and not responses[-1].HasField("immediate_response"):
            responses.append(pb.ProcessingResponse(request_trailers=pb.TrailersResponse()))
        return responses

    def reject(self, error: EppError, model: str = "", target: str = "") -> list[pb.ProcessingResponse]:
        """Answer with an error (also used by the caller when flow control rejects the waiting request)."""
        if self.waiting is not None and self._prepared is not None:
            model, target = self._prepared.request.model, self._prepared.request.target_model
            self._prepared, self._raw, self.waiting = None, b"", None
        if self._observer is not None:
            self._observer.failed(error, model, target)
        if self._trace is not None:
            self._trace.end_orchestration(target, 0, error.code)
        if log.isEnabledFor(VERBOSE_LEVEL):
            log.log(
                VERBOSE_LEVEL,
                "request rejected",
                extra={"x-request-id": self._request_id, "error_code": error.code, "error": error.message},
            )
        return [self._immediate(error)]

    def _schedule(self, prepared: Prepared, raw: bytes, ended_with_trailers: bool) -> list[pb.ProcessingResponse]:
        try:
            decision = self._director.schedule(prepared)
        except EppError as error:
            return self.reject(error, prepared.request.model, prepared.request.target_model)
        self._traced(decision)
        request = decision.request
        if request.target_model != request.model:
            self._rewrite = (
                b'"model":"' + request.target_model.encode() + b'"',
                b'"model":"' + request.model.encode() + b'"',
            )
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
        if log.isEnabledFor(VERBOSE_LEVEL):
            request = decision.request
            log.log(
                VERBOSE_LEVEL,
                "request routed",
                extra={
                    "x-request-id": self._request_id,
                    "model": request.model,
                    "target_model": request.target_model,
                    "destination": decision.destination,
                },
            )
        # Built in place: passing sub-messages to constructors would copy them.
        response = pb.ProcessingResponse()
        common = (response.request_headers if phase == "request_headers" else response.request_body).response
        common.clear_route_cache = True
        mutation = common.header_mutation
        set_header(mutation, DESTINATION_HEADER, decision.destination)
        if self._id_generated:
            set_header(mutation, REQUEST_ID_HEADER, self._request_id)
        if decision.new_body is not None:
            set_header(mutation, "content-length", str(len(decision.new_body)))
        if decision.headers:
            for key, value in decision.headers.items():
                set_header(mutation, key, value)
        metadata = response.dynamic_metadata.fields[LB_NAMESPACE].struct_value.fields
        metadata[DESTINATION_HEADER].string_value = decision.destination
        if self._emit_scores:
            set_endpoint_scores(metadata, decision.result, self._director.table.hostports)
        return response

    def _immediate(self, error: EppError) -> pb.ProcessingResponse:
        self._phase = Phase.CLOSED
        return immediate_response(error)

    def _read_subset(self, message: pb.ProcessingRequest) -> None:
        if not message.HasField("metadata_context"):
            return
        namespace = message.metadata_context.filter_metadata.get(SUBSET_NAMESPACE)
        if namespace is None or SUBSET_KEY not in namespace.fields:
            return
        values = namespace.fields[SUBSET_KEY].list_value.values
        self._subset = [v.string_value for v in values if v.WhichOneof("kind") == "string_value"]

    # --- response phase -----------------------------------------------------------------------

    def _read_served(self, message: pb.ProcessingRequest) -> None:
        if message.HasField("metadata_context"):
            namespace = message.metadata_context.filter_metadata.get(LB_NAMESPACE)
            if namespace is not None and SERVED_KEY in namespace.fields:
                self.served_endpoint = namespace.fields[SERVED_KEY].string_value

    def _on_response_headers(self, headers: pb.HttpHeaders) -> list[pb.ProcessingResponse]:
        for header in headers.headers.headers:
            if header.key.lower() == "content-type":
                value = header.raw_value.decode("latin-1") if header.raw_value else header.value
                self._sse = "text/event-stream" in value
        streaming = self._sse or (self._decision is not None and self._decision.request.stream)
        if self._sse:
            self._sse_scanner = SSEUsageScanner()
        self._buffer_response = self._rewrite is not None and not streaming
        self._phase = Phase.RESPONSE_BODY
        if headers.end_of_stream:
            self._phase = Phase.DONE
            self._finish()
        response = pb.ProcessingResponse(response_headers=pb.HeadersResponse())
        added = self._decision.result.response_headers if self._decision is not None else None
        if added:  # e.g. x-session-token from session-affinity-scorer
            mutation = response.response_headers.response.header_mutation
            for key, value in added.items():
                set_header(mutation, key, value)
        return [response]

    def _on_response_body(self, body: pb.HttpBody) -> list[pb.ProcessingResponse]:
        chunk = body.body
        end = body.end_of_stream
        self._phase = Phase.DONE if end else Phase.RESPONSE_BODY
        if self._response_bytes == 0 and self._decision is not None and (chunk or end):
            self._director.first_chunk(self._decision, self._sse)
            if self._sse and self._observer is not None:
                self._observer.first_response_chunk(self._decision, time.perf_counter() - self._started)
        self._response_bytes += len(chunk)
        scanner = self._sse_scanner
        if scanner is not None:
            scanner.feed(chunk)
        elif self._buffer_response or self._response_bytes <= MAX_USAGE_BODY:
            self._response_chunks.append(chunk)
        if self._response_mode in _PER_CHUNK_RESPONSE_MODES:
            response = pb.ProcessingResponse(response_body=pb.BodyResponse())
            if self._rewrite is not None:
                response.response_body.response.body_mutation.body = _rewrite_model(chunk, self._rewrite)
            if end:
                self._finish()
            return [response]
        if self._buffer_response:
            if not end:
                return []
            whole = b"".join(self._response_chunks)
            assert self._rewrite is not None
            self._finish()
            return streamed_chunks(_rewrite_model(whole, self._rewrite), "response_body", end_of_stream=True)
        if self._rewrite is not None:
            chunk = _rewrite_model(chunk, self._rewrite)
        if end:
            self._finish()
        response = pb.ProcessingResponse()
        streamed = response.response_body.response.body_mutation.streamed_response
        streamed.body = chunk
        streamed.end_of_stream = end
        return [response]

    def _finish(self) -> None:
        """The response ended, or the stream did: close the trace and release the pick, each once."""
        if self._trace is not None:
            self._trace.end()
            self._trace = None
        self._body_chunks = []
        decision = self._decision
        if decision is None or decision.released:
            return
        usage: Usage | None = None
        if self._sse_scanner is not None:
            self._sse_scanner.finish()
            usage = self._sse_scanner.usage
        elif self._response_chunks and self._response_bytes <= MAX_USAGE_BODY:
            usage = usage_from_json(b"".join(self._response_chunks))
        self._response_chunks = []
        self._director.complete(decision, usage)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "response complete",
                extra={
                    "x-request-id": self._request_id,
                    "response_bytes": self._response_bytes,
                    "prompt_tokens": usage.prompt_tokens if usage else None,
                    "completion_tokens": usage.completion_tokens if usage else None,
                },
            )
        if self._observer is not None:
            self._observer.completed(decision, usage, self._response_bytes, time.perf_counter() - self._started)


def set_endpoint_scores(metadata: Any, result: SchedulingResult, hostports: list[str]) -> None:
    """Into the `envoy.lb` struct's fields: the primary profile's total score of every candidate it scored (a
    request without a body, picked at random, has none and gets no key)."""
    profile = result.profile_results.get(result.primary_profile)
    trace = profile.trace if profile is not None else None
    if trace is None or trace.total is None:
        return
    scores = metadata[SCORES_KEY].struct_value.fields
    for hostport, score in endpoint_scores(trace, hostports):
        scores[hostport].number_value = score


def immediate_response(error: EppError) -> pb.ProcessingResponse:
    """The error as Envoy's ImmediateResponse: its HTTP status and body go to the client."""
    response = pb.ProcessingResponse()
    immediate = response.immediate_response
    immediate.status.code = error.http_status  # type: ignore[assignment]
    immediate.body = error.body
    immediate.details = error.code
    return response


def set_header(mutation: pb.HeaderMutation, key: str, value: str) -> None:
    option = mutation.set_headers.add(append_action=_OVERWRITE)
    header = option.header
    header.key = key
    header.raw_value = value.encode("latin-1")


def streamed_chunks(body: bytes, phase: str, end_of_stream: bool) -> list[pb.ProcessingResponse]:
    if len(body) <= BODY_CHUNK_LIMIT:
        pieces = [body]
    else:
        pieces = [body[i : i + BODY_CHUNK_LIMIT] for i in range(0, len(body), BODY_CHUNK_LIMIT)]
    responses = []
    for index, piece in enumerate(pieces):
        response = pb.ProcessingResponse()
        body_response = response.request_body if phase == "request_body" else response.response_body
        streamed = body_response.response.body_mutation.streamed_response
        streamed.body = piece
        streamed.end_of_stream = end_of_stream and index == len(pieces) - 1
        responses.append(response)
    return responses


def _rewrite_model(data: bytes, rewrite: tuple[bytes, bytes]) -> bytes:
    """Put the client's model name back into a response (compact and `"model": "x"` spellings)."""
    target, incoming = rewrite
    if target in data:
        return data.replace(target, incoming)
    spaced = target.replace(b'":"', b'": "', 1)
    if spaced in data:
        return data.replace(spaced, incoming.replace(b'":"', b'": "', 1))
    return data
