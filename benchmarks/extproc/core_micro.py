"""Python cost of one request through the protocol core, without gRPC: request headers, body, response
headers and body, as Envoy sends them in full-duplex mode, parsed from wire bytes and answered with
serialised responses. `python benchmarks/extproc/core_micro.py [--requests 20000] [--endpoints 4] [--clock cpu]`
(`--clock cpu` times the CPU of this thread, so a loaded machine's waiting for a core does not count).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from epp.config.schema import default_config
from epp.datastore.table import Endpoint, EndpointTable
from epp.director import Director
from epp.extproc.core import ExtProcStream
from epp.observability.metrics import RequestMetrics
from epp.requests.parsers import openai_parser
from epp.scheduling.framework import build_scheduler
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb

HEADERS = {
    ":authority": "127.0.0.1:8081", ":path": "/v1/completions", ":method": "POST", ":scheme": "http",
    "content-type": "application/json", "content-length": "1024", "user-agent": "wrk",
    "x-forwarded-proto": "http", "x-request-id": "1f0c8f8e-6d3c-4d52-9a55-2f7a7e0c8a11",
}  # fmt: skip


def messages(body: bytes) -> list[bytes]:
    headers = pb.ProcessingRequest()
    for key, value in HEADERS.items():
        headers.request_headers.headers.headers.add(key=key, raw_value=value.encode())
    headers.protocol_config.request_body_mode = 4  # type: ignore[assignment]
    headers.protocol_config.response_body_mode = 4  # type: ignore[assignment]
    request_body = pb.ProcessingRequest()
    request_body.request_body.body = body
    request_body.request_body.end_of_stream = True
    response_headers = pb.ProcessingRequest()
    for key, value in ((":status", "200"), ("content-type", "application/json"), ("server", "nginx")):
        response_headers.response_headers.headers.headers.add(key=key, raw_value=value.encode())
    response_body = pb.ProcessingRequest()
    response_body.response_body.body = b'{"object":"text_completion","usage":{"prompt_tokens":9,"completion_tokens":5}}'
    end = pb.ProcessingRequest()
    end.response_body.end_of_stream = True
    return [m.SerializeToString() for m in (headers, request_body, response_headers, response_body, end)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--endpoints", type=int, default=4)
    parser.add_argument("--scheduler", choices=("default", "least-queue"), default="default",
                        help="default = the built-in EndpointPickerConfig (queue 2, KV 2, prefix 3)")  # fmt: skip
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    table = EndpointTable(max(args.endpoints, 1))
    for i in range(args.endpoints):
        table.add(Endpoint(f"10.0.{i // 250}.{i % 250 + 1}", 8000))
    if args.scheduler == "default":
        scheduler = build_scheduler(default_config(), table)
        director = Director(table, scheduler, hooks=scheduler, saturation=scheduler.saturation)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the test double lives in tests/support
        from tests.support.least_queue import LeastQueueScheduler

        director = Director(table, LeastQueueScheduler())
    metrics = RequestMetrics(CollectorRegistry())
    body = b'{"model":"meta-llama/Llama-3.1-8B-Instruct","max_tokens":16,"prompt":"' + b"abcdefghij " * 85 + b'"}'
    wire = messages(body)
    parse = pb.ProcessingRequest.FromString
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    for label, observer in (("without metrics", None), ("with metrics", metrics)):
        runs = []
        for _ in range(5):
            started = clock()
            for _ in range(args.requests // 5):
                stream = ExtProcStream(director, openai_parser, observer)
                for raw in wire:
                    for response in stream.process(parse(raw)):
                        response.SerializeToString()
                stream.close()
            runs.append((clock() - started) / (args.requests // 5) * 1e6)
        runs.sort()
        print(
            f"core, {args.scheduler} scheduler, {args.endpoints} endpoints, 1 KB body, {label}: "
            f"median {runs[2]:.1f} µs/request ({args.clock} clock)"
        )


if __name__ == "__main__":
    main()
