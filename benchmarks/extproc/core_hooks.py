"""Where a request's Python goes in `core_micro.py`'s flow: every hook of the built-in default's plugins, the
director's steps and the stream's message handlers, each wrapped with a timer, medians per request.

    python benchmarks/extproc/core_hooks.py [--requests 12000] [--endpoints 4]

Run it with another tree's environment (`DIR/.venv/bin/python benchmarks/extproc/core_hooks.py` from DIR, this file
copied there) to split an older tree's cost the same way: it wraps whatever hooks that tree's classes define. The
wrappers add about 0.2 µs per call; nested steps (the director's schedule holds the plugins') are counted in both.
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from epp.config.schema import default_config
from epp.datastore.table import Endpoint, EndpointTable
from epp.director import Director
from epp.extproc.core import ExtProcStream
from epp.observability.metrics import RequestMetrics
from epp.scheduling.framework import SchedulerRuntime, build_scheduler
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core_micro import messages

try:
    from epp.requests.parsers import openai_parser
except ImportError:  # trees before the parsers module
    from epp.extproc.core import openai_parser  # type: ignore[attr-defined,no-redef]

PLUGIN_HOOKS = ("produce", "score", "pick", "picked", "pre_request", "first_response", "response_complete")
DIRECTOR_STEPS = ("prepare", "schedule", "_commit", "first_chunk", "complete")
STREAM_STEPS = ("_on_request_headers", "_on_response_headers", "_on_response_body", "close")


def timed(cls: type, name: str, label: str, spent: dict[str, list[float]]) -> None:
    """Replace `cls.name` (defined on that class itself) by a wrapper that appends each call's seconds."""
    function: Callable[..., Any] = cls.__dict__[name]

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = function(*args, **kwargs)
        spent.setdefault(label, []).append(time.perf_counter() - started)
        return result

    setattr(cls, name, wrapper)


def pool(endpoints: int) -> tuple[EndpointTable, SchedulerRuntime]:
    table = EndpointTable(endpoints)
    for i in range(endpoints):
        table.add(Endpoint(f"10.0.{i // 250}.{i % 250 + 1}", 8000))
    return table, build_scheduler(default_config(), table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=12_000)
    parser.add_argument("--endpoints", type=int, default=4)
    args = parser.parse_args()
    spent: dict[str, list[float]] = {}
    _, probe = pool(args.endpoints)  # the classes to wrap: the hooks the framework binds when it is built
    for plugin_class in {type(plugin) for plugin in probe.plugins.values()}:
        for hook in PLUGIN_HOOKS:
            if hook in plugin_class.__dict__:
                timed(plugin_class, hook, f"{plugin_class.__name__}.{hook}", spent)
    for name in DIRECTOR_STEPS:
        if name in Director.__dict__:
            timed(Director, name, f"Director.{name}", spent)
    for name in STREAM_STEPS:
        if name in ExtProcStream.__dict__:
            timed(ExtProcStream, name, f"ExtProcStream.{name}", spent)
    table, scheduler = pool(args.endpoints)
    director = Director(table, scheduler, hooks=scheduler, saturation=scheduler.saturation)
    metrics = RequestMetrics(CollectorRegistry())
    body = b'{"model":"meta-llama/Llama-3.1-8B-Instruct","max_tokens":16,"prompt":"' + b"abcdefghij " * 85 + b'"}'
    wire = messages(body)
    parse = pb.ProcessingRequest.FromString
    whole: list[float] = []
    gc.disable()  # collected every 1,000 requests, between them
    for i in range(args.requests):
        started = time.perf_counter()
        stream = ExtProcStream(director, openai_parser, metrics)
        for raw in wire:
            for response in stream.process(parse(raw)):
                response.SerializeToString()
        stream.close()
        whole.append(time.perf_counter() - started)
        if i % 1000 == 999:
            gc.collect()
    warm = args.requests // 6  # the first requests fill the index and teach the model
    for label, seconds in sorted(spent.items()):
        calls = len(seconds) / args.requests
        print(f"{label:48s} {statistics.median(seconds[int(warm * calls) :]) * 1e6:7.2f} µs  x{calls:.2f} per request")
    print(f"{'whole request':48s} {statistics.median(whole[warm:]) * 1e6:7.2f} µs")


if __name__ == "__main__":
    main()
