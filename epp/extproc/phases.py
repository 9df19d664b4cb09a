"""Where an ext_proc stream stands, which message each phase accepts, and what `process()` answers.

`Phase` is where a stream stands and `LEGAL_IN` which message kinds each phase accepts (h11 keeps its
connection state the same way). A stream's `process()` answers with `Responses` to send, or with a `Wait`:
the request waits in flow control, and the stream answers once `resume()` or `refuse()` is called.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb

Responses = list[pb.ProcessingResponse]


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

    # Enum hashes a member by its name in Python; every message checks its phase in a set of phases, and the
    # members are singletons compared by identity, so the identity hash (in C) serves
    __hash__ = object.__hash__


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


@dataclass(frozen=True, slots=True)
class Wait:
    """`process()` asks its caller to queue the request in flow control: under `fairness_id` at `priority`,
    holding `size` bytes. When its turn comes the caller sends `stream.resume()`, and when the queue refuses it
    (full, expired), `stream.refuse(error)`."""

    fairness_id: str
    priority: int
    size: int
