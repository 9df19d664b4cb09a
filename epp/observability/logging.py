"""Logging set-up for `--v` and `--zap-encoder`.

Verbosity follows the reference: 1 quiet, 2 default, 3 verbose, 4 debug, 5 trace. Nothing is logged
per request below 3 (the reference logs per request from 2; here the default costs no CPU on the hot
path). Request-scoped lines carry `x-request-id`.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

VERBOSE, DEBUG, TRACE = 3, 4, 5
#: Python logging levels of the reference's verbosities 3 and 5 (4 is logging.DEBUG)
VERBOSE_LEVEL, TRACE_LEVEL = 15, 5
logging.addLevelName(VERBOSE_LEVEL, "VERBOSE")
logging.addLevelName(TRACE_LEVEL, "TRACE")


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


class JsonFormatter(logging.Formatter):
    """zap-like JSON lines: ts, level, logger, msg, plus any `extra` fields (e.g. x-request-id)."""

    _RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._RESERVED:
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    """zap's console layout: time, level, logger and message separated by tabs, then the `extra` fields
    (x-request-id, model, destination, ...) as one JSON object; a traceback, if any, on the lines after."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s\t%(levelname)s\t%(name)s\t%(message)s")
        self.converter = time.gmtime

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = {k: v for k, v in record.__dict__.items() if k not in JsonFormatter._RESERVED}
        return f"{line}\t{orjson.dumps(fields, default=str).decode()}" if fields else line


def configure(v: int, encoder: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if encoder == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_for(v))
