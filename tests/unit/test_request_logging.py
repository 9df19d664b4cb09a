from __future__ import annotations

import io
import json
import logging

from epp.observability import logging as epp_logging
from tests.unit.test_extproc_core import body_msg, headers_msg, make_table, stream_for


def log_lines(v: int, encoder: str) -> list[str]:
    """The lines logged while a routed request and a rejected one (rid-7, rid-8) go through the core."""
    epp_logging.configure(v, encoder)
    buffer = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        stream = stream_for(make_table("10.0.0.1:8000"))
        stream.process(headers_msg({"x-request-id": "rid-7"}))
        stream.process(body_msg(b'{"model":"m","prompt":"p"}'))
        bad = stream_for(make_table("10.0.0.1:8000"))
        bad.process(headers_msg({"x-request-id": "rid-8"}))
        bad.process(body_msg(b"{}"))
    finally:
        epp_logging.configure(2, "console")
    return buffer.getvalue().splitlines()


def run_request(v: int) -> list[dict[str, object]]:
    return [json.loads(line) for line in log_lines(v, "json")]


def test_nothing_per_request_at_default_verbosity() -> None:
    assert run_request(1) == []
    assert run_request(2) == []


def test_verbose_lines_carry_the_request_id() -> None:
    lines = run_request(3)
    routed = next(line for line in lines if line["msg"] == "request routed")
    assert routed["x-request-id"] == "rid-7" and routed["destination"] == "10.0.0.1:8000"
    assert routed["level"] == "verbose"
    rejected = next(line for line in lines if line["msg"] == "request rejected")
    assert rejected["x-request-id"] == "rid-8" and rejected["error_code"] == "BadRequest"


def test_console_lines_keep_the_request_fields() -> None:
    routed = next(line for line in log_lines(3, "console") if "request routed" in line)
    _, level, logger, message, fields = routed.split("\t")
    assert (level, logger, message) == ("VERBOSE", "epp.request", "request routed")
    assert json.loads(fields) == {
        "x-request-id": "rid-7",
        "model": "m",
        "target_model": "m",
        "destination": "10.0.0.1:8000",
    }
