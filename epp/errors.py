"""Errors the EPP answers with an ImmediateResponse: reference codes, HTTP statuses and body text."""

from __future__ import annotations

HTTP_STATUS: dict[str, int] = {
    "BadRequest": 400,
    "Unauthorized": 401,
    "Forbidden": 403,
    "NotFound": 404,
    "PayloadTooLarge": 413,
    "ResourceExhausted": 429,
    "Internal": 500,
    "ServiceUnavailable": 503,
}


class EppError(Exception):
    """An error the client sees as `inference error: <Code> - <Msg>` with the code's HTTP status."""

    def __init__(self, code: str, message: str) -> None:
        if code not in HTTP_STATUS:
            raise ValueError(f"unknown error code {code!r}; known: {', '.join(HTTP_STATUS)}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    @property
    def body(self) -> bytes:
        return f"inference error: {self.code} - {self.message}".encode()


def bad_request(message: str) -> EppError:
    return EppError("BadRequest", message)
