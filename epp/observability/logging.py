"""Logging set-up from `--v` and the controller-runtime zap flags the reference binds.

Verbosity follows the reference: 1 quiet, 2 default, 3 verbose, 4 debug, 5 trace. Nothing is logged
per request below 3 (the reference logs per request from 2; here the default costs no CPU on the hot
path). Request-scoped lines carry `x-request-id`.

The zap flags, as controller-runtime reads them:
- `--zap-log-level`: `debug`, `info`, `error`, `panic`, or an integer N > 0 meaning verbosity N (the same as
  `--v N`); when given it wins over `--v`. Named levels keep their names here (`debug` shows debug lines).
- `--zap-devel` (default true, as the reference's binary sets it): development defaults, i.e. the console
  encoder and stack traces from `warn`; `--zap-devel=false` gives production defaults, the JSON encoder and
  stack traces from `error`. An explicit `--zap-encoder` / `--zap-stacktrace-level` wins over either.
- `--zap-stacktrace-level`: `info`, `error` or `panic`; lines at or above it carry a `stacktrace` field.
- `--zap-time-encoding`: `epoch` (seconds, a number), `millis`, `nano`, `iso8601`, `rfc3339` (the default
  when unset, as controller-runtime's), `rfc3339nano`.
Both encoders carry every field of a line: JSON as keys, console as a JSON object after the message.
"""

from __future__ import annotations

import datetime
import logging
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import orjson

VERBOSE, DEBUG, TRACE = 3, 4, 5
#: Python logging levels of the reference's verbosities 3 and 5 (4 is logging.DEBUG)
VERBOSE_LEVEL, TRACE_LEVEL = 15, 5
logging.addLevelName(VERBOSE_LEVEL, "VERBOSE")
logging.addLevelName(TRACE_LEVEL, "TRACE")

#: zap level names controller-runtime accepts for --zap-log-level → Python levels
NAMED_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "error": logging.ERROR, "panic": logging.CRITICAL}
#: ... and for --zap-stacktrace-level (`warn` is the development default; no flag value names it)
STACKTRACE_LEVELS = {"info": logging.INFO, "error": logging.ERROR, "panic": logging.CRITICAL}
TIME_ENCODINGS = ("epoch", "millis", "nano", "iso8601", "rfc3339", "rfc3339nano")
ENCODERS = ("json", "console")


def level_for(v: int) -> int:
    if v >= TRACE:
        return TRACE_LEVEL
    if v >= DEBUG:
        return logging.DEBUG
    if v >= VERBOSE:
        return VERBOSE_LEVEL
    if v >= 2:
        return logging.INFO
    return logging.WARNING


def parse_log_level(text: str) -> int:
    """`--zap-log-level` → a Python logging level; ValueError naming the valid values."""
    named = NAMED_LEVELS.get(text.strip().lower())
    if named is not None:
        return named
    try:
        verbosity = int(text)
    except ValueError:
        verbosity = 0
    if verbosity <= 0:
        raise ValueError(
            f"--zap-log-level {text!r}: use debug, info, error, panic or a verbosity > 0 (e.g. 3, as --v 3)"
        )
    return level_for(verbosity)


def parse_stacktrace_level(text: str) -> int:
    level = STACKTRACE_LEVELS.get(text.strip().lower())
    if level is None:
        raise ValueError(f"--zap-stacktrace-level {text!r}: use {', '.join(STACKTRACE_LEVELS)}")
    return level


def _micros(created: float) -> int:
    """A record's time in whole microseconds (what a float of Unix seconds holds exactly)."""
    return round(created * 1e6)


def _time_encoder(name: str) -> Callable[[float], object]:
    def iso(created: float, with_fraction: bool, nano: bool) -> str:
        moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
        text = moment.strftime("%Y-%m-%dT%H:%M:%S")
        if nano:  # Go's RFC3339Nano: fraction without trailing zeros, none when zero
            fraction = f"{_micros(created) % 1_000_000:06d}000".rstrip("0")
            return text + (f".{fraction}" if fraction else "") + "Z"
        if with_fraction:  # zap's ISO8601: milliseconds and a numeric zone
            return text + f".{moment.microsecond // 1000:03d}+0000"
        return text + "Z"

    encoders: dict[str, Callable[[float], object]] = {
        "epoch": lambda created: created,
        "millis": lambda created: created * 1e3,
        "nano": lambda created: _micros(created) * 1000,
        "iso8601": lambda created: iso(created, True, False),
        "rfc3339": lambda created: iso(created, False, False),
        "rfc3339nano": lambda created: iso(created, False, True),
    }
    if name not in encoders:
        raise ValueError(f"--zap-time-encoding {name!r}: use {', '.join(TIME_ENCODINGS)}")
    return encoders[name]


@dataclass(frozen=True)
class LogOptions:
    level: int = logging.INFO
    encoder: str = "console"
    time_encoding: str = "rfc3339"
    stacktrace_level: int = logging.WARNING

    @classmethod
    def from_flags(
        cls,
        v: int,
        encoder: str = "",
        log_level: str = "",
        devel: bool = True,
        stacktrace_level: str = "",
        time_encoding: str = "",
    ) -> LogOptions:
        """Empty strings mean "flag not given": then --v and the development / production defaults apply."""
        return cls(
            level=parse_log_level(log_level) if log_level else level_for(v),
            encoder=encoder or ("console" if devel else "json"),
            time_encoding=_checked_time_encoding(time_encoding or "rfc3339"),
            stacktrace_level=parse_stacktrace_level(stacktrace_level)
            if stacktrace_level
            else (logging.WARNING if devel else logging.ERROR),
        )


def _checked_time_encoding(name: str) -> str:
    _time_encoder(name)
    return name


_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_LOGGING_DIR = logging.__file__.rsplit("/", 1)[0]


def _fields(record: logging.LogRecord) -> dict[str, object]:
    """The line's own fields (`extra=`), e.g. x-request-id, model, destination."""
    return {key: value for key, value in record.__dict__.items() if key not in _RESERVED}


def _stacktrace() -> str:
    """Where the line was logged from (the logging module's own frames left out)."""
    frames = [f for f in traceback.extract_stack() if not f.filename.startswith(_LOGGING_DIR)]
    return "".join(traceback.format_list(frames[:-2]))  # without the formatter's frames


class _ZapFormatter(logging.Formatter):
    def __init__(self, options: LogOptions) -> None:
        super().__init__()
        self._time = _time_encoder(options.time_encoding)
        self._stack_from = options.stacktrace_level

    def _extras(self, record: logging.LogRecord) -> dict[str, object]:
        fields = _fields(record)
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info)
        if record.levelno >= self._stack_from:
            fields["stacktrace"] = _stacktrace()
        return fields


class JsonFormatter(_ZapFormatter):
    """zap-like JSON lines: ts, level, logger, msg, plus every field of the line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(self._extras(record))
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(_ZapFormatter):
    """zap's console encoder: time, LEVEL, logger and message separated by tabs, then the fields as JSON."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self._time(record.created)}\t{record.levelname}\t{record.name}\t{record.getMessage()}"
        fields = self._extras(record)
        stack = fields.pop("stacktrace", None)
        if fields:
            line += "\t" + orjson.dumps(fields, default=str).decode()
        if stack is not None:
            line += "\n" + str(stack).rstrip("\n")
        return line


def configure_options(options: LogOptions) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(options) if options.encoder == "json" else ConsoleFormatter(options))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(options.level)


def configure(v: int, encoder: str) -> None:
    """Verbosity and encoder only, every other zap flag at its default."""
    configure_options(LogOptions.from_flags(v, encoder))
