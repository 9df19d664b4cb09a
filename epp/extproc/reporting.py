"""What a stream reports: to metrics through a `StreamObserver`, and its log lines (per request only at --v 3 and
up, so the default verbosity costs no logging per request)."""

from __future__ import annotations

import logging
from typing import Protocol

from epp.director import Decision
from epp.errors import EppError
from epp.observability.logging import VERBOSE_LEVEL
from epp.scheduling.types import Usage

log = logging.getLogger("epp.request")


class StreamObserver(Protocol):
    """What the core reports for metrics; every method must be cheap."""

    def picked(self, decision: Decision) -> None: ...

    def failed(self, error: EppError, model: str, target_model: str) -> None: ...

    def completed(self, decision: Decision, usage: Usage | None, response_bytes: int, seconds: float) -> None: ...

    def first_response_chunk(self, decision: Decision, seconds: float) -> None: ...

    def processing(self, request_seconds: float, response_seconds: float) -> None: ...


def log_out_of_order(kind: str, phase: str, request_id: str) -> None:
    log.warning("ext_proc %s out of order (stream %s): answering 400", kind, phase, extra={"x-request-id": request_id})


def log_rejected(error: EppError, request_id: str) -> None:
    if log.isEnabledFor(VERBOSE_LEVEL):
        extra = {"x-request-id": request_id, "error_code": error.code, "error": error.message}
        log.log(VERBOSE_LEVEL, "request rejected", extra=extra)


def log_routed(decision: Decision, request_id: str) -> None:
    if log.isEnabledFor(VERBOSE_LEVEL):
        request = decision.request
        extra = {
            "x-request-id": request_id,
            "model": request.model,
            "target_model": request.target_model,
            "destination": decision.destination,
        }
        log.log(VERBOSE_LEVEL, "request routed", extra=extra)


def log_completed(request_id: str, response_bytes: int, usage: Usage | None) -> None:
    if log.isEnabledFor(logging.DEBUG):
        extra = {
            "x-request-id": request_id,
            "response_bytes": response_bytes,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
        }
        log.debug("response complete", extra=extra)
