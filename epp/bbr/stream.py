"""Body-based routing: one `BodyRouterStream` per ext_proc stream reads the request body's `model` and sets
the `x-gateway-model-name` request header, with `clear_route_cache`, so the gateway's routes (HTTPRoute rules
matching that header) choose the InferencePool, and so the pool's EPP, by model.

Sans-I/O like the EPP's protocol core, whose message order (`Phase`, `LEGAL_IN`), header mutation and body
chunking it shares. The body is forwarded byte for byte. Outcomes, counted as the reference's metrics:
- a JSON object with a string `model`: the header is set (`bbr_success_total`);
- a JSON object without `model`: no header (`bbr_model_not_in_body_total`);
- a body that is not JSON, or a `model` that is not a non-empty string: no header
  (`bbr_model_not_parsed_total`); the reference fails the stream instead, here the route decides.
Without a model a client's own `x-gateway-model-name` header is removed and the route chosen again, so the
header the routes read always comes from the body. A body longer than `--max-request-body-bytes` is answered 413.
Modes (from `protocol_config`, else `--streaming`: FULL_DUPLEX_STREAMED, or BUFFERED as the reference's
default): FULL_DUPLEX_STREAMED holds the headers until the body is complete, then sends the header mutation
and the body as streamed chunks; BUFFERED answers the headers at once and the body message with the mutation.
Response messages (Envoy should skip them: `response_header_mode: SKIP`) are passed through unchanged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import orjson

from epp.errors import EppError
from epp.extproc.messages import BUFFERED, FULL_DUPLEX, NO_BODY, immediate_response, set_header, streamed_chunks
from epp.extproc.phases import LEGAL_IN, Phase
from epp_pb.envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb

MODEL_HEADER = "x-gateway-model-name"


class Outcome(enum.Enum):
    """What a request's body said; the values are the reference's counter names."""

    SUCCESS = "bbr_success"
    MODEL_NOT_IN_BODY = "bbr_model_not_in_body"
    MODEL_NOT_PARSED = "bbr_model_not_parsed"


@dataclass
class BodyRouterCounts:
    """Outcomes over all streams (plain ints: one increment per request, read by the metrics collector)."""

    success: int = 0
    model_not_in_body: int = 0
    model_not_parsed: int = 0

    def add(self, outcome: Outcome) -> None:
        if outcome is Outcome.SUCCESS:
            self.success += 1
        elif outcome is Outcome.MODEL_NOT_IN_BODY:
            self.model_not_in_body += 1
        else:
            self.model_not_parsed += 1


def model_of(body: bytes) -> tuple[Outcome, str]:
    """The request's model, read from a JSON body."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Outcome.MODEL_NOT_PARSED, ""
    if not isinstance(document, dict) or "model" not in document:
        return Outcome.MODEL_NOT_IN_BODY, ""
    model = document["model"]
    if not isinstance(model, str) or not model:
        return Outcome.MODEL_NOT_PARSED, ""
    return Outcome.SUCCESS, model


class BodyRouterStream:
    __slots__ = (
        "_chunks", "_counts", "_max_body", "_mode", "_phase", "_response_mode", "_size", "outcome",
    )  # fmt: skip

    def __init__(self, counts: BodyRouterCounts, streaming: bool, max_body_bytes: int) -> None:
        self._counts = counts
        self._mode: int = FULL_DUPLEX if streaming else BUFFERED
        self._response_mode: int = self._mode
        self._max_body = max_body_bytes
        self._phase = Phase.REQUEST_HEADERS
        self._chunks: list[bytes] = []
        self._size = 0
        self.outcome: Outcome | None = None

    @property
    def phase(self) -> Phase:
        return self._phase

    def after_send(self) -> None:
        """Nothing is deferred past a response here."""

    def close(self) -> None:
        self._chunks = []
        self._phase = Phase.CLOSED

    def process(self, message: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        kind = message.WhichOneof("request")
        if kind is None or self._phase is Phase.CLOSED:
            return []
        if self._phase not in LEGAL_IN[kind]:
            return self._refuse(EppError("BadRequest", f"ext_proc {kind} out of order: the stream was "
                                                       f"{self._phase.value}"))  # fmt: skip
        if kind == "request_headers":
            if message.HasField("protocol_config"):
                self._mode = message.protocol_config.request_body_mode
                self._response_mode = message.protocol_config.response_body_mode
            return self._on_headers(message.request_headers)
        if kind == "request_body":
            return self._on_body(message.request_body)
        if kind == "request_trailers":
            if self._phase is Phase.ROUTED:
                return [pb.ProcessingResponse(request_trailers=pb.TrailersResponse())]
            responses = self._route(end_of_stream=False)
            responses.append(pb.ProcessingResponse(request_trailers=pb.TrailersResponse()))
            return responses
        return self._pass_response(kind, message)

    def _on_headers(self, headers: pb.HttpHeaders) -> list[pb.ProcessingResponse]:
        if self._mode not in (FULL_DUPLEX, BUFFERED, NO_BODY):
            name = mode_pb.ProcessingMode.BodySendMode.Name(self._mode)
            return self._refuse(EppError("Internal", f"ext_proc request_body_mode {name} is not supported by body-"
                                         "based routing; configure FULL_DUPLEX_STREAMED or BUFFERED"))  # fmt: skip
        if headers.end_of_stream or self._mode == NO_BODY:
            self._phase = Phase.ROUTED  # no body, no model: the route decides without the header
            response = pb.ProcessingResponse()
            response.request_headers.response.clear_route_cache = True
            response.request_headers.response.header_mutation.remove_headers.append(MODEL_HEADER)
            return [response]
        self._phase = Phase.REQUEST_BODY
        for header in headers.headers.headers:
            if header.key == "content-length":
                length = (header.raw_value or header.value.encode()).decode("latin-1")
                if length.isdigit() and int(length) > self._max_body:
                    return self._too_large()
        if self._mode == BUFFERED:
            return [pb.ProcessingResponse(request_headers=pb.HeadersResponse())]
        return []

    def _on_body(self, body: pb.HttpBody) -> list[pb.ProcessingResponse]:
        self._size += len(body.body)
        if self._size > self._max_body:
            return self._too_large()
        self._chunks.append(body.body)
        if not body.end_of_stream:
            return []
        return self._route(end_of_stream=True)

    def _route(self, end_of_stream: bool) -> list[pb.ProcessingResponse]:
        raw = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks = []
        self.outcome, model = model_of(raw)
        self._counts.add(self.outcome)
        self._phase = Phase.ROUTED
        response = pb.ProcessingResponse()
        phase = response.request_body if self._mode == BUFFERED else response.request_headers
        common = phase.response
        common.clear_route_cache = True  # a route chosen on a client's own header must be chosen again
        if model:
            set_header(common.header_mutation, MODEL_HEADER, model)
        else:
            common.header_mutation.remove_headers.append(MODEL_HEADER)
        if self._mode == BUFFERED:
            return [response]
        return [response, *streamed_chunks(raw, "request_body", end_of_stream)]

    def _pass_response(self, kind: str, message: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        if kind == "response_headers":
            self._phase = Phase.DONE if message.response_headers.end_of_stream else Phase.RESPONSE_BODY
            return [pb.ProcessingResponse(response_headers=pb.HeadersResponse())]
        if kind == "response_trailers":
            self._phase = Phase.DONE
            return [pb.ProcessingResponse(response_trailers=pb.TrailersResponse())]
        body = message.response_body
        self._phase = Phase.DONE if body.end_of_stream else Phase.RESPONSE_BODY
        if self._response_mode != FULL_DUPLEX:
            return [pb.ProcessingResponse(response_body=pb.BodyResponse())]
        return streamed_chunks(body.body, "response_body", body.end_of_stream)

    def _too_large(self) -> list[pb.ProcessingResponse]:
        self._chunks = []
        return self._refuse(EppError("PayloadTooLarge", f"request body larger than {self._max_body} bytes"))

    def _refuse(self, error: EppError) -> list[pb.ProcessingResponse]:
        self._phase = Phase.CLOSED
        return [immediate_response(error)]
