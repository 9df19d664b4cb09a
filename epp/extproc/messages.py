"""Envoy's messages as the core reads and writes them: the metadata it reads (the subset hint, the endpoint that
served), and the ProcessingResponses it sends (the pick, streamed body chunks, an ImmediateResponse, the model
name put back into a response), built in place (passing sub-messages to constructors would copy them)."""

from __future__ import annotations

from collections.abc import MutableMapping

from google.protobuf.struct_pb2 import Value

from epp.director import Decision
from epp.errors import EppError
from epp.observability.decisions import endpoint_scores
from epp.scheduling.types import SchedulingResult
from epp_pb.envoy.config.core.v3 import base_pb2 as core_pb
from epp_pb.envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb

BODY_CHUNK_LIMIT = 62_000
DESTINATION_HEADER = "x-gateway-destination-endpoint"
LB_NAMESPACE = "envoy.lb"
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
SERVED_KEY = "x-gateway-destination-endpoint-served"
#: with --emit-endpoint-scores: `envoy.lb` struct of every scored candidate's `ip:port` → its total score
SCORES_KEY = "x-gateway-destination-endpoint-scores"
REQUEST_ID_HEADER = "x-request-id"

FULL_DUPLEX = mode_pb.ProcessingMode.FULL_DUPLEX_STREAMED
BUFFERED = mode_pb.ProcessingMode.BUFFERED
NO_BODY = mode_pb.ProcessingMode.NONE
STREAMED = mode_pb.ProcessingMode.STREAMED
_OVERWRITE = core_pb.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
StructFields = MutableMapping[str, Value]


def read_subset(message: pb.ProcessingRequest) -> list[str] | None:
    """The endpoints of the `envoy.lb.subset_hint` metadata (None: no hint)."""
    if not message.HasField("metadata_context"):
        return None
    namespace = message.metadata_context.filter_metadata.get(SUBSET_NAMESPACE)
    if namespace is None or SUBSET_KEY not in namespace.fields:
        return None
    values = namespace.fields[SUBSET_KEY].list_value.values
    return [v.string_value for v in values if v.WhichOneof("kind") == "string_value"]


def read_served(message: pb.ProcessingRequest) -> str | None:
    """The endpoint Envoy reports it sent the request to (`envoy.lb` metadata), if it says."""
    if message.HasField("metadata_context"):
        namespace = message.metadata_context.filter_metadata.get(LB_NAMESPACE)
        if namespace is not None and SERVED_KEY in namespace.fields:
            return namespace.fields[SERVED_KEY].string_value
    return None


def header_value(headers: pb.HttpHeaders, key: str) -> str | None:
    """The value of header `key` (lower-case, as Envoy sends keys), from raw_value where Envoy put it there."""
    for header in headers.headers.headers:
        if header.key == key:
            return header.raw_value.decode("latin-1") if header.raw_value else header.value
    return None


def set_header(mutation: pb.HeaderMutation, key: str, value: str) -> None:
    option = mutation.set_headers.add(append_action=_OVERWRITE)
    header = option.header
    header.key = key
    header.raw_value = value.encode("latin-1")


def picked_response(
    decision: Decision, phase: str, generated_request_id: str | None, scored_hostports: list[str] | None = None
) -> pb.ProcessingResponse:
    """The answer that routes: destination header and `envoy.lb` metadata, on the `phase` response
    ("request_headers" or "request_body"); `generated_request_id` when the EPP made the request's id;
    `scored_hostports` (the table's) to add the primary profile's scores (--emit-endpoint-scores)."""
    response = pb.ProcessingResponse()
    common = (response.request_headers if phase == "request_headers" else response.request_body).response
    common.clear_route_cache = True
    mutation = common.header_mutation
    set_header(mutation, DESTINATION_HEADER, decision.destination)
    if generated_request_id is not None:
        set_header(mutation, REQUEST_ID_HEADER, generated_request_id)
    if decision.new_body is not None:
        set_header(mutation, "content-length", str(len(decision.new_body)))
    if decision.headers:
        for key, value in decision.headers.items():
            set_header(mutation, key, value)
    metadata = response.dynamic_metadata.fields[LB_NAMESPACE].struct_value.fields
    metadata[DESTINATION_HEADER].string_value = decision.destination
    if scored_hostports is not None:
        set_endpoint_scores(metadata, decision.result, scored_hostports)
    return response


def set_endpoint_scores(metadata: StructFields, result: SchedulingResult, hostports: list[str]) -> None:
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
    response = pb.ProcessingResponse()
    immediate = response.immediate_response
    immediate.status.code = error.http_status  # type: ignore[assignment]
    immediate.body = error.body
    immediate.details = error.code
    return response


def unsupported_body_mode(mode: int) -> EppError:
    """The error for a request_body_mode other than FULL_DUPLEX_STREAMED, BUFFERED or NONE."""
    # a mode newer than these protos is an int without a name (Name() raises ValueError on it)
    send_mode = mode_pb.ProcessingMode.BodySendMode
    name = send_mode.Name(mode) if mode in send_mode.values() else str(mode)
    return EppError(
        "Internal",
        f"ext_proc request_body_mode {name} is not supported; configure FULL_DUPLEX_STREAMED (reference) or BUFFERED",
    )


def streamed_chunks(body: bytes, phase: str, end_of_stream: bool) -> list[pb.ProcessingResponse]:
    """`body` as streamed body responses of at most BODY_CHUNK_LIMIT bytes each."""
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


def rewrite_model(data: bytes, rewrite: tuple[bytes, bytes]) -> bytes:
    """Put the client's model name back into a response (compact and `"model": "x"` spellings)."""
    target, incoming = rewrite
    if target in data:
        return data.replace(target, incoming)
    spaced = target.replace(b'":"', b'": "', 1)
    if spaced in data:
        return data.replace(spaced, incoming.replace(b'":"', b'": "', 1))
    return data
