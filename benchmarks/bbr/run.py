"""Python cost of one request through body-based routing's protocol core, without gRPC: request headers and
body as Envoy sends them (FULL_DUPLEX_STREAMED or BUFFERED), parsed from wire bytes and answered with
serialised responses. Prints the median µs per request over `--rounds` rounds for each body size and mode.
`python benchmarks/bbr/run.py [--requests 5000] [--rounds 5] [--bodies 1024,65536]`
"""

from __future__ import annotations

import argparse
import statistics
import time

import orjson

from epp.bbr.stream import BodyRouterCounts, BodyRouterStream
from epp.extproc.messages import BUFFERED, FULL_DUPLEX
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb

HEADERS = {
    ":authority": "127.0.0.1:8081", ":path": "/v1/chat/completions", ":method": "POST", ":scheme": "http",
    "content-type": "application/json", "user-agent": "wrk", "x-request-id": "1f0c8f8e-6d3c-4d52-9a55-2f7a7e0c8a11",
}  # fmt: skip


def wire_messages(body: bytes, mode: int) -> list[bytes]:
    headers = pb.ProcessingRequest()
    for key, value in {**HEADERS, "content-length": str(len(body))}.items():
        headers.request_headers.headers.headers.add(key=key, raw_value=value.encode())
    headers.protocol_config.request_body_mode = mode  # type: ignore[assignment]
    request_body = pb.ProcessingRequest()
    request_body.request_body.body = body
    request_body.request_body.end_of_stream = True
    return [headers.SerializeToString(), request_body.SerializeToString()]


def chat_body(size: int) -> bytes:
    filler = "x" * max(size - 120, 1)
    return orjson.dumps({"model": "model-b", "messages": [{"role": "user", "content": filler}], "stream": True})


def per_request_us(wire: list[bytes], requests: int) -> float:
    counts = BodyRouterCounts()
    started = time.perf_counter()
    for _ in range(requests):
        stream = BodyRouterStream(counts, True, 64 << 20)
        for raw in wire:
            for response in stream.process(pb.ProcessingRequest.FromString(raw)):
                response.SerializeToString()
        stream.close()
    elapsed = time.perf_counter() - started
    assert counts.success == requests
    return elapsed / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bodies", default="1024,65536")
    args = parser.parse_args()
    sizes = [int(s) for s in args.bodies.split(",")]
    cases = [(size, name, wire_messages(chat_body(size), mode))
             for size in sizes for name, mode in (("full-duplex", FULL_DUPLEX), ("buffered", BUFFERED))]  # fmt: skip
    samples: dict[tuple[int, str], list[float]] = {(size, name): [] for size, name, _ in cases}
    for _ in range(args.rounds):  # interleaved, so a busy moment on a shared machine hits every case
        for size, name, wire in cases:
            samples[(size, name)].append(per_request_us(wire, args.requests))
    print(f"{'body bytes':>10} {'mode':>12} {'µs/request (median)':>20} {'min':>8} {'max':>8}")
    for (size, name), values in samples.items():
        print(f"{size:>10} {name:>12} {statistics.median(values):>20.1f} {min(values):>8.1f} {max(values):>8.1f}")


if __name__ == "__main__":
    main()
