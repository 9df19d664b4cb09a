"""The response half of a stream: each response body message answered in the mode Envoy uses, the model name
put back when the request's was rewritten, and the usage tokens read on the way.

FULL_DUPLEX_STREAMED chunks are echoed as streamed responses at once (a non-streaming response whose model
name must be put back is held until its end, since the name may straddle two chunks); in BUFFERED and
STREAMED modes each body message is answered by its own BodyResponse.
"""

from __future__ import annotations

from epp.extproc.messages import BUFFERED, NO_BODY, rewrite_model, streamed_chunks
from epp.extproc.phases import Responses
from epp.requests.usage import SSEUsageScanner, usage_from_json
from epp.scheduling.types import Usage
from epp_pb.envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb

#: non-streaming response bodies are kept (for usage) up to this size; larger ones are not parsed
MAX_USAGE_BODY = 8 * 1024 * 1024
#: response body modes in which every body message gets its own BodyResponse (no streamed_response)
_PER_CHUNK_RESPONSE_MODES = (BUFFERED, mode_pb.ProcessingMode.STREAMED, mode_pb.ProcessingMode.BUFFERED_PARTIAL)


class ResponseBody:
    __slots__ = ("_buffer_whole", "_chunks", "_observe_only", "_per_chunk", "_rewrite", "_scanner", "size", "sse")

    def __init__(self, mode: int, sse: bool, rewrite: tuple[bytes, bytes] | None, buffer_whole: bool) -> None:
        """`sse`: the body is server-sent events; `rewrite`: (upstream, client) `"model":"..."` spellings to swap;
        `buffer_whole`: hold a full-duplex body until its end to rewrite it at once."""
        self.sse = sse
        self._scanner = SSEUsageScanner() if sse else None
        self._rewrite = rewrite
        self._buffer_whole = buffer_whole
        self._per_chunk = mode in _PER_CHUNK_RESPONSE_MODES
        #: mode NONE: an observing stream's copy of the body (observing.py), answered with nothing
        self._observe_only = mode == NO_BODY
        self._chunks: list[bytes] = []
        #: bytes of response body seen so far
        self.size = 0

    def answer(self, chunk: bytes, end: bool) -> Responses:
        self.size += len(chunk)
        scanner = self._scanner
        if scanner is not None:
            scanner.feed(chunk)
        elif self._buffer_whole or self.size <= MAX_USAGE_BODY:
            self._chunks.append(chunk)
        if self._observe_only:
            return []
        rewrite = self._rewrite
        if self._per_chunk:
            response = pb.ProcessingResponse(response_body=pb.BodyResponse())
            if rewrite is not None:
                response.response_body.response.body_mutation.body = rewrite_model(chunk, rewrite)
            return [response]
        if self._buffer_whole and rewrite is not None:
            if not end:
                return []
            return streamed_chunks(rewrite_model(b"".join(self._chunks), rewrite), "response_body", end_of_stream=True)
        if rewrite is not None:
            chunk = rewrite_model(chunk, rewrite)
        response = pb.ProcessingResponse()
        streamed = response.response_body.response.body_mutation.streamed_response
        streamed.body = chunk
        streamed.end_of_stream = end
        return [response]

    def usage(self) -> Usage | None:
        """The usage the response reported (SSE: the chunk carrying it; JSON: its `usage`), read once at its end;
        the body is dropped."""
        usage: Usage | None = None
        if self._scanner is not None:
            self._scanner.finish()
            usage = self._scanner.usage
            self._scanner = None
        elif self._chunks and self.size <= MAX_USAGE_BODY:
            usage = usage_from_json(b"".join(self._chunks))
        self._chunks = []
        return usage
