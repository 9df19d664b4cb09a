"""Fuzz targets: one function per parser of untrusted input, each `(data: bytes) -> None`.

A target returns for every input the parser answers as documented (a parsed value or its own error type) and
raises for anything else: an unexpected exception type, a wrong answer to a well-formed input, or an error
message without its path. The same functions replay the kept corpora in the test suite.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from google.protobuf.message import DecodeError

from epp.config.schema import ConfigError, load_config_text
from epp.datalayer.client import _Conn, _dechunk
from epp.datalayer.extract import Extracted, extract
from epp.datalayer.params import BUILTIN_ENGINES
from epp.datastore.table import Endpoint, EndpointTable
from epp.director import Director
from epp.discovery.static import EndpointSpecError, parse_endpoints_text
from epp.errors import EppError
from epp.extproc.core import ExtProcStream
from epp.extproc.phases import Wait
from epp.k8s.watch import ApiCallError, Gone, ListenerError, OversizedEvent, Reflector, _event, _lines
from epp.migrate.check import find_v1alpha2
from epp.migrate.cli import render_steps
from epp.migrate.convert import MigrationError, Options, plan_migration
from epp.migrate.manifests import ManifestError, load_text
from epp.requests.openai import API_SUFFIXES, ParsedBody, parse_openai_body, rewrite_model
from epp.requests.parsers import openai_parser
from epp.requests.usage import SSEUsageScanner
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from tests.support.least_queue import LeastQueueScheduler

Target = Callable[[bytes], None]
PATHS = [f"/v1{suffix}" for suffix in API_SUFFIXES] + ["/other"]
ENGINES = list(BUILTIN_ENGINES.values())


class Bytes:
    """Reads choices off the front of a fuzz input and leaves the rest as the payload."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def cuts(self, count: int) -> list[int]:
        return [self.byte() * 256 + self.byte() for _ in range(count)]

    def rest(self) -> bytes:
        return self.data[self.pos :]


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(edges)] or [b""]


def text_of(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def body(data: bytes) -> None:
    """OpenAI request bodies: a ParsedBody (whose body can be re-serialised) or a 400."""
    if not data:
        return
    path = PATHS[data[0] % len(PATHS)]
    try:
        parsed = parse_openai_body(data[1:], path)
        assert isinstance(parsed, ParsedBody) and isinstance(parsed.model, str)
        assert isinstance(parsed.prompt_bytes, bytes)
        rewrite_model(parsed.body, "rewritten")
    except EppError as error:
        assert error.http_status == 400, error


def scan_sse(chunks: list[bytes]) -> Any:
    """The usage an SSEUsageScanner reports after `chunks`."""
    scanner = SSEUsageScanner()
    for chunk in chunks:
        scanner.feed(chunk)
    scanner.finish()
    return scanner.usage


def sse(data: bytes) -> None:
    """The SSE usage scanner finds the same usage however the stream is chunked."""
    reader = Bytes(data)
    cuts = reader.cuts(reader.byte() % 8)
    stream = reader.rest()
    assert scan_sse(pieces(stream, cuts)) == scan_sse([stream])


def metrics(data: bytes) -> None:
    """The metrics extractor reads any page (twice, the second time from hints) without raising."""
    if not data:
        return
    engine = ENGINES[data[0] % len(ENGINES)]
    page = data[1:]
    hints: dict[bytes, int] = {}
    first = extract(page, engine, hints)
    again = extract(page, engine, hints)
    assert first == again, (first, again)
    _check_extracted(first)


def _check_extracted(out: Extracted) -> None:
    for value in (out.waiting, out.running, out.kv_usage, out.block_size, out.num_blocks):
        assert value is None or isinstance(value, float)
    if out.lora is not None:
        running, waiting, max_lora = out.lora
        assert all(isinstance(name, str) for name in running | waiting) and isinstance(max_lora, float)


SOURCE = "fuzz.yaml"


def config(data: bytes) -> None:
    """EndpointPickerConfig text: a config or a ConfigError whose every line names the file and a path."""
    try:
        load_config_text(text_of(data), SOURCE)
    except ConfigError as error:
        assert error.errors, "a ConfigError without errors"
        for line in error.errors:
            assert line.startswith(f"{SOURCE}: "), line


def endpoints(data: bytes) -> None:
    """An endpoints file: endpoints with IP addresses and valid ports, or an EndpointSpecError."""
    try:
        found = parse_endpoints_text(text_of(data), Path(SOURCE))
    except EndpointSpecError as error:
        assert str(error).startswith(("--endpoints-file", SOURCE)), error
        return
    for endpoint in found:
        assert 1 <= endpoint.port <= 65535
        assert endpoint.metrics_port is None or 1 <= endpoint.metrics_port <= 65535


def migrate(data: bytes) -> None:
    """`epp migrate`: manifests convert and render, or fail with a ManifestError/MigrationError."""
    try:
        manifests = load_text(text_of(data), SOURCE)
    except ManifestError as error:
        assert error.errors
        return
    for finding in find_v1alpha2(manifests):
        str(finding)
    try:
        plan = plan_migration(manifests, Options())
    except MigrationError as error:
        assert error.errors
        return
    yaml.safe_load_all(render_steps(plan))


class _Worker:
    """Stands in for the ScrapeWorker: records what the connection reports for the round (as the worker, it
    takes the first report of a round and ignores later ones)."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[bool, bytes] | None] = []

    def _done(self, target: Any, ok: bool, body: bytes) -> None:
        if target.busy:
            target.busy = False
            self.outcomes.append((ok, body))

    def _failed(self, target: Any) -> None:
        if target.busy:
            target.busy = False
            self.outcomes.append(None)


class _Target:
    def __init__(self) -> None:
        self.conn: _Conn | None = None
        self.busy = True


def _feed(chunks: list[bytes], close: bool) -> list[tuple[bool, bytes] | None]:
    worker, target = _Worker(), _Target()
    conn = _Conn(worker, target)  # type: ignore[arg-type]
    target.conn = conn
    for chunk in chunks:
        if chunk:
            conn.data_received(chunk)
    if close:
        conn.connection_lost(None)
    return worker.outcomes


def _framed(payload: bytes, reader: Bytes) -> bytes:
    """`payload` as a 200 response framed by content-length, chunked (with extensions, trailers) or close."""
    framing = reader.byte() % 3
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
    if framing == 0:
        return head + b"Content-Length: %d\r\n\r\n" % len(payload) + payload
    if framing == 1:
        out = head + b"Transfer-Encoding: chunked\r\n\r\n"
        for piece in pieces(payload, reader.cuts(reader.byte() % 6)):
            if piece:
                out += b"%x%s\r\n%s\r\n" % (len(piece), b";ext=1" if reader.byte() & 1 else b"", piece)
        return out + (b"0\r\nX-Trailer: t\r\n\r\n" if reader.byte() & 1 else b"0\r\n\r\n")
    return head + b"\r\n" + payload


def scrape_http(data: bytes) -> None:
    """The scrape client's HTTP/1.1 response parser: any bytes in any chunking never raise; a well-formed
    response in any chunking and framing yields its body exactly."""
    reader = Bytes(data)
    well_formed = reader.byte() & 1
    cuts = reader.cuts(reader.byte() % 6)
    if well_formed:
        framing_reader = Bytes(reader.rest()[:16])
        payload = reader.rest()[16:]
        response = _framed(payload, framing_reader)
        outcomes = _feed(pieces(response, cuts), close=True)
        assert outcomes == [(True, payload)], (outcomes[:2], payload[:40])
        return
    response = reader.rest()
    outcomes = _feed(pieces(response, cuts), close=True)
    assert len(outcomes) == 1, outcomes  # a round ends, one way or the other, once the connection is gone
    with contextlib.suppress(ValueError):
        _dechunk(response, 0)


class _Listener:
    def on_replace(self, objects: dict[Any, Any]) -> None:
        pass

    def on_upsert(self, obj: dict[str, Any]) -> None:
        pass

    def on_delete(self, obj: dict[str, Any]) -> None:
        pass


class _Content:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def iter_any(self) -> Any:
        for chunk in self.chunks:
            yield chunk


def _run_sync(iterator: Any) -> Iterator[bytes]:
    """Drives an async iterator that never suspends (its source is in memory) without an event loop."""
    while True:
        step = iterator.__anext__()
        try:
            step.send(None)
        except StopIteration as done:
            yield done.value
        except StopAsyncIteration:
            return
        else:  # it suspended: not expected of an in-memory source
            step.close()
            raise AssertionError("the line reader suspended on an in-memory source")


#: what the Reflector's run loop handles (logs, then lists or watches again); anything else ends the watch
WATCH_HANDLED = (Gone, ApiCallError, ListenerError, OversizedEvent, ValueError)


def watch(data: bytes) -> None:
    """Kubernetes watch bodies: events split into lines in any chunking and applied to the reflector's cache;
    a bad event ends in an error the reflector's run loop handles, never one that ends its task."""
    reader = Bytes(data)
    cuts = reader.cuts(reader.byte() % 6)
    body = reader.rest()
    reflector = Reflector("fuzz", _no_list_call, _Listener(), max_line_bytes=4096)
    lines = _run_sync(_lines(_Content(pieces(body, cuts)), 4096))
    expected = body.split(b"\n")
    if expected and not expected[-1]:
        expected.pop()
    seen = []
    try:
        for line in lines:
            seen.append(line)
            if line.strip():
                reflector._apply(_event(line))
    except WATCH_HANDLED:
        return
    if all(len(line) <= 4096 for line in expected):
        assert seen == expected, (seen[:3], expected[:3])


async def _no_list_call(**kwargs: Any) -> Any:
    raise AssertionError("the fuzz target does not list")


def _extproc_stream() -> tuple[ExtProcStream, EndpointTable]:
    table = EndpointTable(8)
    for host in ("10.0.0.1", "10.0.0.2"):
        table.add(Endpoint(host, 8000))
    return ExtProcStream(Director(table, LeastQueueScheduler(seed=1)), openai_parser), table


def extproc(data: bytes) -> None:
    """ext_proc streams of arbitrary ProcessingRequest messages (each length-prefixed by one byte): the core never
    raises, holds at most one charge, answers with at most one immediate response, and releases on close."""
    stream, table = _extproc_stream()
    pos = 0
    immediate = 0
    while pos < len(data):
        size = data[pos]
        message_bytes = data[pos + 1 : pos + 1 + size]
        pos += 1 + size
        try:
            message = pb.ProcessingRequest.FromString(message_bytes)
        except DecodeError:
            continue  # the servicer closes such a stream; the core never sees the message
        responses = stream.process(message)
        assert not isinstance(responses, Wait), "no flow control here: the core never asks to wait"
        stream.after_send()
        immediate += sum(r.HasField("immediate_response") for r in responses)
        assert table.inflight_requests.sum() <= 1, table.inflight_requests.sum()
    assert immediate <= 1, immediate
    stream.close()
    assert table.inflight_requests.sum() == 0 and table.inflight_tokens.sum() == 0


TARGETS: dict[str, Target] = {
    "body": body,
    "sse": sse,
    "metrics": metrics,
    "config": config,
    "endpoints": endpoints,
    "migrate": migrate,
    "scrape_http": scrape_http,
    "watch": watch,
    "extproc": extproc,
}
