"""The controller-runtime zap flags: levels (named and numeric), encoders, time encodings, stack traces."""

from __future__ import annotations

import datetime
import io
import json
import logging
from collections.abc import Iterator

import pytest

from epp.cli import parse_settings
from epp.flags import log_options
from epp.observability import logging as epp_logging

BASE = ["--endpoints", "127.0.0.1:8000"]
MOMENT = datetime.datetime(2026, 12, 7, 4, 5, 6, 125000, tzinfo=datetime.UTC).timestamp()


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    yield buffer
    epp_logging.configure(2, "console")


def emit(argv: list[str], buffer: io.StringIO) -> list[str]:
    """Configure logging from `argv` as `epp` does, log one line at each level, return what was written."""
    epp_logging.configure_options(log_options(parse_settings([*BASE, *argv])))
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    log = logging.getLogger("epp.test")
    for level, name in ((epp_logging.TRACE_LEVEL, "trace"), (logging.DEBUG, "debug"),
                        (epp_logging.VERBOSE_LEVEL, "verbose"), (logging.INFO, "info"),
                        (logging.WARNING, "warning"), (logging.ERROR, "error")):  # fmt: skip
        record = log.makeRecord("epp.test", level, __file__, 1, name, (), None, extra={"x-request-id": "r1"})
        record.created = MOMENT
        if log.isEnabledFor(level):
            log.handle(record)
    return buffer.getvalue().splitlines()


def messages(lines: list[str]) -> list[str]:
    return [json.loads(line)["msg"] for line in lines if line.startswith("{")]


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        ([], ["info", "warning", "error"]),
        (["--v", "4"], ["debug", "verbose", "info", "warning", "error"]),
        (["--zap-log-level", "error"], ["error"]),
        (["--zap-log-level", "info"], ["info", "warning", "error"]),
        (["--zap-log-level", "debug"], ["debug", "verbose", "info", "warning", "error"]),
        (["--zap-log-level", "panic"], []),
        (["--zap-log-level", "3"], ["verbose", "info", "warning", "error"]),
        (["--zap-log-level", "5", "--v", "1"], ["trace", "debug", "verbose", "info", "warning", "error"]),
        (["--zap-log-level", "1", "--v", "5"], ["warning", "error"]),  # the zap level wins over --v
    ],
)
def test_log_level(argv: list[str], shown: list[str], captured: io.StringIO) -> None:
    lines = emit(["--zap-encoder", "json", *argv], captured)
    assert messages(lines) == shown


@pytest.mark.parametrize(
    ("encoding", "ts"),
    [
        ("epoch", MOMENT),
        ("millis", MOMENT * 1e3),
        ("nano", round(MOMENT * 1e6) * 1000),
        ("iso8601", "2026-12-07T04:05:06.125+0000"),
        ("rfc3339", "2026-12-07T04:05:06Z"),
        ("rfc3339nano", "2026-12-07T04:05:06.125Z"),
    ],
)
def test_time_encodings(encoding: str, ts: object, captured: io.StringIO) -> None:
    line = json.loads(emit(["--zap-encoder", "json", "--zap-time-encoding", encoding], captured)[0])
    assert line["ts"] == ts


def test_default_time_encoding_is_rfc3339(captured: io.StringIO) -> None:
    """controller-runtime's default when the flag is unset (its help text says epoch; its code says RFC 3339)."""
    assert json.loads(emit(["--zap-encoder", "json"], captured)[0])["ts"] == "2026-12-07T04:05:06Z"


def test_console_line_carries_its_fields(captured: io.StringIO) -> None:
    line = emit(["--zap-time-encoding", "iso8601"], captured)[0]
    ts, level, logger, msg, fields = line.split("\t")
    assert (ts, level, logger, msg) == ("2026-12-07T04:05:06.125+0000", "INFO", "epp.test", "info")
    assert json.loads(fields) == {"x-request-id": "r1"}


def test_zap_devel_false_means_production_defaults(captured: io.StringIO) -> None:
    lines = emit(["--zap-devel=false"], captured)
    assert messages(lines) == ["info", "warning", "error"]  # JSON without --zap-encoder
    assert [("stacktrace" in json.loads(line)) for line in lines] == [False, False, True]  # from error


def test_development_stack_traces_start_at_warn(captured: io.StringIO) -> None:
    lines = emit(["--zap-encoder", "json"], captured)
    assert [("stacktrace" in json.loads(line)) for line in lines] == [False, True, True]
    assert "test_zap_flags.py" in json.loads(lines[-1])["stacktrace"]


@pytest.mark.parametrize(("level", "with_stack"), [("info", [True, True, True]), ("panic", [False, False, False])])
def test_stacktrace_level(level: str, with_stack: list[bool], captured: io.StringIO) -> None:
    lines = emit(["--zap-encoder", "json", "--zap-stacktrace-level", level], captured)
    assert [("stacktrace" in json.loads(line)) for line in lines] == with_stack


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [
        ("zap-log-level", "loud", "debug, info, error, panic"),
        ("zap-log-level", "0", "verbosity > 0"),
        ("zap-log-level", "warn", "debug, info, error, panic"),
        ("zap-time-encoding", "unix", "rfc3339nano"),
        ("zap-stacktrace-level", "debug", "info, error, panic"),
        ("zap-encoder", "logfmt", "json or console"),
    ],
)
def test_bad_values_are_refused(flag: str, value: str, named: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings([*BASE, f"--{flag}", value])
    error = capsys.readouterr().err
    assert f"--{flag} {value!r}" in error and named in error
