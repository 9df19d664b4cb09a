"""Responses watched by a second, observing ext_proc filter instead of crossing the EPP chunk by chunk.

With the reference's Envoy configuration every response body chunk travels to the EPP and back
(FULL_DUPLEX_STREAMED): one gRPC message each way per chunk, the bulk of a streamed request's CPU here, and
each token waits on the EPP's event loop before the client sees it. deploy/envoy/envoy.yaml instead gives the
routing filter `response_body_mode: NONE` and adds a second ext_proc filter in `observability_mode`: Envoy
sends it the request headers and the whole response without waiting for answers, and the EPP sends none.

The two filters open two gRPC streams. The routing stream marks its pick with OBSERVE_HEADER (a token this
process made) in the request headers it returns; the observing stream reads the token in the request headers
it is sent, claims the routing stream from `ResponseWatch`, and feeds it the response: the first chunk's time,
the usage, the end. From the claim on, releasing the pick is the observing stream's job. The two gRPC streams are
not ordered, so a routing stream that ends unclaimed keeps its pick for its observing stream a while
(LATE_OBSERVER_S). Once a pick has waited in vain and no observing stream has ever come, Envoy is taken to have no
observing filter and routing streams complete at their own end, as with one filter. A pick whose response went
unobserved is released without its usage (one warning per process says why).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from typing import Protocol

from epp.extproc.messages import header_value
from epp.extproc.phases import Phase, Responses
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb

log = logging.getLogger("epp.extproc")

#: request header carrying the routing stream's token to the observing filter
OBSERVE_HEADER = "x-gateway-epp-observe"
#: how long a routing stream's pick waits for an observing stream that has not come by the routing stream's end
LATE_OBSERVER_S = 2.0


class ObservableStream(Protocol):
    """A routing stream's response half (epp/extproc/response_phase.py)."""

    def mark_observed(self) -> None: ...

    def observe(self, kind: str | None, message: pb.ProcessingRequest) -> bool: ...

    def observed_end(self) -> None: ...


class ResponseWatch:
    """Routing streams waiting for their observing stream, by token. One per process."""

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:12] + "-"
        self._numbers = itertools.count()
        self._waiting: dict[str, ObservableStream] = {}
        #: observing streams that found no routing stream to claim (token unknown, late, or absent)
        self.unclaimed = 0
        #: routing streams whose response went unobserved (they completed at their own end)
        self.unobserved = 0
        #: an observing stream has come
        self.observers_seen = False
        #: a pick waited for an observing stream in vain and none has ever come: Envoy has no observing filter, so
        #: routing streams complete their responses themselves (until one comes)
        self.observers_absent = False
        self._warned: set[str] = set()

    def register(self, stream: ObservableStream) -> str:
        token = self._prefix + str(next(self._numbers))
        self._waiting[token] = stream
        return token

    def drop(self, token: str, warn: bool) -> None:
        """The routing stream completes its response itself: no observing stream ever came (`warn`)."""
        if self._waiting.pop(token, None) is not None and warn:
            self._unobserved()

    def park(self, token: str) -> bool:
        """The routing stream ended unclaimed. Its observing stream may still be on its way (the two gRPC streams
        are not ordered): keep the pick for it up to LATE_OBSERVER_S, then release it. False (nothing kept, the
        caller releases): observing streams are known absent, or no event loop runs (tests of the core)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self.observers_absent or loop is None:
            self._waiting.pop(token, None)
            return False
        loop.call_later(LATE_OBSERVER_S, self._expire, token)
        return True

    def _expire(self, token: str) -> None:
        stream = self._waiting.pop(token, None)
        if stream is not None:
            if not self.observers_seen:  # Envoy has no observing filter: routing streams complete themselves
                self.observers_absent = True
            self._unobserved()
            stream.observed_end()

    def _unobserved(self) -> None:
        self.unobserved += 1
        self.warn_once(
            "unobserved",
            "a routed request's response was not observed: its pick completes without its usage and first-token "
            "time. Envoy needs the observing ext_proc filter of deploy/envoy/envoy.yaml after the routing one, "
            "with request_header_mode SEND and observability_mode true",
        )

    def claim(self, token: str) -> ObservableStream | None:
        stream = self._waiting.pop(token, None)
        if stream is not None:
            stream.mark_observed()
        else:
            self.unclaimed += 1
            if token and not token.startswith(self._prefix):
                self.warn_once(
                    "foreign",
                    "an observing ext_proc stream carries another epp process's token: with several epp replicas "
                    "behind one Envoy cluster keep response_body_mode FULL_DUPLEX_STREAMED "
                    "(deploy/envoy/envoy-replicas.yaml), since Envoy may send the two streams to different replicas",
                )
        return stream

    def observer_arrived(self) -> None:
        """An observing stream came: Envoy has the observing filter, routing streams wait for theirs."""
        self.observers_seen = True
        self.observers_absent = False

    def warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(text)


class ObservingStream:
    """One observing ext_proc stream: answers nothing, hands the response to the routing stream it claimed."""

    __slots__ = ("_phase", "_routing", "_watch")

    def __init__(self, watch: ResponseWatch) -> None:
        watch.observer_arrived()
        self._watch = watch
        self._routing: ObservableStream | None = None
        self._phase = Phase.REQUEST_HEADERS

    @property
    def phase(self) -> Phase:
        return self._phase

    def process(self, message: pb.ProcessingRequest) -> Responses:
        kind = message.WhichOneof("request")
        if kind == "request_headers":
            token = header_value(message.request_headers, OBSERVE_HEADER)
            self._routing = self._watch.claim(token) if token else None
            # nothing to watch (a request routed before this stream, or not by this process): end the stream
            self._phase = Phase.ROUTED if self._routing is not None else Phase.DONE
            return []
        routing = self._routing
        if routing is None:
            self._phase = Phase.DONE
            return []
        if routing.observe(kind, message):
            self._phase = Phase.DONE
        return []

    def after_send(self) -> None:
        return None

    def close(self) -> None:
        routing, self._routing = self._routing, None
        if routing is not None:
            routing.observed_end()
