"""Decision latency of the built-in default profile (or --config FILE) and the prefix index.

    python benchmarks/scheduler/run.py [--config FILE] [--endpoints 10,100,1000,10000] [--prompts 500,8000,32000]
                                       [--shapes chat,conversation] [--picks 2000]
                                       [--index-endpoints 1000] [--index-entries 31250] [--recording] [--lifecycle]

Per (shape, endpoints, prompt size): metrics columns get random load, the index is warmed with each
shared prefix once, then `--picks` decisions are timed one by one (produce + filters + scorers + picker);
the pre-request index insert runs after each (as it does once the response is sent) and is reported apart.
Shapes: `chat` — a timed prompt shares a warm ~500-character system prompt and has a fresh tail (the first
16 blocks, hashed and walked, decide the match); `conversation` — a timed prompt re-sends a warm
conversation of all but its last 200 characters (every block up to the new turn is held: the shared bytes
reuse the remembered hashes, the rest is hashed, and the whole prompt is walked before the pick).
Then the prefix index alone is filled to --index-endpoints x --index-entries (block, endpoint) entries and
its resident bytes per entry are reported, with the insert cost per request.
With --recording: per (shape, endpoints, prompt size), picks alternate between plain and traced + recorded
in the /debug/decisions ring, and the medians of both are printed with the cost of filling the
--emit-endpoint-scores metadata from the traced pick.
With --lifecycle: each pick is charged, and its first chunk and its end come later, as on the live path (see
Lifecycle); without it only the producers' own queues are charged at the pick, and nothing is released.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np

from epp.config.schema import EndpointPickerConfig, default_config, load_config_file
from epp.datastore.table import Endpoint, EndpointTable
from epp.director import Decision, Director
from epp.extproc.messages import set_endpoint_scores
from epp.observability.decisions import DecisionLog
from epp.plugins.prefix import ApproxPrefixCacheProducer, block_hashes
from epp.plugins.prefix_index import PrefixIndex, as_keys
from epp.scheduling.framework import SchedulerRuntime, build_scheduler
from epp.scheduling.types import LLMRequest, SchedulingResult, Usage
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def make_table(count: int, rng: np.random.Generator) -> EndpointTable:
    table = EndpointTable(count)
    for i in range(count):
        table.add(Endpoint(f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}", 8000))
    slots = table.live_slots()
    table.waiting_queue[slots] = rng.integers(0, 20, len(slots))
    table.kv_usage[slots] = rng.random(len(slots))
    return table


def request(i: int, prompt: str) -> LLMRequest:
    data = prompt.encode()
    return LLMRequest(f"r{i}", MODEL, MODEL, {}, prompt_bytes=data, body_size=len(data) + 60)


class Lifecycle:
    """After each timed pick, what the live request path does (epp.director): the pick's endpoint is charged in the
    in-flight columns and the pre-request hooks run; FIRST_CHUNK picks later the response's first chunk arrives
    (the producers release the queued prefill and learn the TTFT), COMPLETE picks later the response ends (usage
    reported, the load released). Time is virtual, TICK seconds per pick, and every endpoint reports its KV cache
    size, so the KV terms are priced. Without it the benchmark charges only the producers' own queues at the pick
    and never releases them."""

    FIRST_CHUNK = 20
    COMPLETE = 100
    TICK = 0.01
    CACHE_BLOCKS, BLOCK_SIZE = 9600.0, 16.0

    def __init__(self, table: EndpointTable, scheduler: SchedulerRuntime) -> None:
        self.now = 1000.0
        self.director = Director(table, scheduler, hooks=scheduler)
        self.director.clock = self.clock
        for plugin in scheduler.plugins.values():
            if hasattr(plugin, "clock"):
                plugin.clock = self.clock
        slots = table.live_slots()
        table.cache_num_blocks[slots] = self.CACHE_BLOCKS
        table.cache_block_size[slots] = self.BLOCK_SIZE
        self.in_flight: deque[Decision] = deque()

    def clock(self) -> float:
        return self.now

    def after(self, req: LLMRequest, result: SchedulingResult) -> None:
        """The pick's charge and hooks, then the first chunks and ends that are due."""
        self.now += self.TICK
        self.in_flight.append(self.director._commit(req, result, None))
        if len(self.in_flight) > self.FIRST_CHUNK:
            self.director.first_chunk(self.in_flight[-self.FIRST_CHUNK - 1], streamed=True)
        if len(self.in_flight) > self.COMPLETE:
            done = self.in_flight.popleft()
            tokens = len(done.request.prompt_bytes) // 4
            self.director.complete(done, Usage(prompt_tokens=tokens, completion_tokens=128, total_tokens=tokens + 128))


def warmed(
    endpoints: int, prompt_chars: int, seed: int, shape: str, config: EndpointPickerConfig | None
) -> tuple[EndpointTable, SchedulerRuntime, list[str]]:
    """A table of `endpoints` with random load, its scheduler with the index warmed, and the shared prefixes."""
    table, scheduler, shared = _unwarmed(endpoints, prompt_chars, seed, shape, config)
    _warm(table, scheduler, shared, lambda warm, result: scheduler.pre_request(warm, result, table))
    return table, scheduler, shared


def warmed_lifecycle(
    endpoints: int, prompt_chars: int, seed: int, shape: str, config: EndpointPickerConfig | None
) -> tuple[EndpointTable, SchedulerRuntime, list[str], Lifecycle]:
    """`warmed`, the warm-up's requests too going through a Lifecycle (so they finish, as live ones do)."""
    table, scheduler, shared = _unwarmed(endpoints, prompt_chars, seed, shape, config)
    live = Lifecycle(table, scheduler)
    _warm(table, scheduler, shared, live.after)
    return table, scheduler, shared, live


def _unwarmed(
    endpoints: int, prompt_chars: int, seed: int, shape: str, config: EndpointPickerConfig | None
) -> tuple[EndpointTable, SchedulerRuntime, list[str]]:
    rng = np.random.default_rng(seed)
    table = make_table(endpoints, rng)
    scheduler = build_scheduler(config or default_config(), table)
    if shape == "chat":
        shared = [f"system prompt {k}: " + "You are a careful assistant. " * 17 for k in range(min(endpoints, 512))]
    else:
        history = max(prompt_chars - 200, 0)
        # 200 conversations: with the table's static load they all land on one endpoint, whose LRU
        # (31,250 blocks) must keep them all for the benchmark to measure matches, not evictions
        shared = [(f"conversation {k}: " + "and then the user said something. " * (history // 34 + 1))[:history]
                  for k in range(min(endpoints, 200))]  # fmt: skip
    return table, scheduler, shared


def _warm(
    table: EndpointTable,
    scheduler: SchedulerRuntime,
    shared: list[str],
    after: Callable[[LLMRequest, SchedulingResult], None],
) -> None:
    candidates = table.live_slots()
    for k, prefix in enumerate(shared):  # warm: each shared prefix sent once
        warm = request(-k - 1, prefix + "hello")
        after(warm, scheduler.schedule(warm, table, candidates))


def pool_arguments(doc: str | None) -> argparse.ArgumentParser:
    """The options of the single-pool decision benchmarks beside this one (kv_full.py, step_busy.py)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--prompt-chars", type=int, default=8000)
    parser.add_argument("--picks", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    return parser


def timed_requests(shared: list[str], prompt_chars: int, count: int, first: int = 0) -> Iterator[LLMRequest]:
    """Request i re-sends a shared prefix (round robin) with a fresh tail, cut to `prompt_chars`."""
    tail = "x" * prompt_chars
    for i in range(first, first + count):
        yield request(i, (shared[i % len(shared)] + f"{i:08d}" + tail)[:prompt_chars])


def time_picks(
    endpoints: int,
    prompt_chars: int,
    picks: int,
    seed: int,
    shape: str = "chat",
    config: EndpointPickerConfig | None = None,
    lifecycle: bool = False,
) -> tuple[float, float, float, float]:
    live = None
    if lifecycle:
        table, scheduler, shared, live = warmed_lifecycle(endpoints, prompt_chars, seed, shape, config)
    else:
        table, scheduler, shared = warmed(endpoints, prompt_chars, seed, shape, config)
    candidates = table.live_slots()
    samples, inserts = [], []
    for req in timed_requests(shared, prompt_chars, picks):
        started = time.perf_counter()
        result = scheduler.schedule(req, table, candidates)
        decided = time.perf_counter()
        if live is None:
            scheduler.pre_request(req, result, table)  # the index insert, after the response went out
        else:
            live.after(req, result)  # the charge and the index insert, then the responses due
        inserts.append(time.perf_counter() - decided)
        samples.append(decided - started)
    samples.sort()
    p50, p99, worst = (statistics.median(samples), samples[int(len(samples) * 0.99)], samples[-1])
    return p50 * 1e3, p99 * 1e3, worst * 1e3, statistics.median(inserts) * 1e3


def time_recording(
    endpoints: int,
    prompt_chars: int,
    picks: int,
    seed: int,
    shape: str = "chat",
    config: EndpointPickerConfig | None = None,
) -> tuple[float, float, float]:
    """Median µs of a pick without tracing, of a pick traced and recorded for /debug/decisions (the two
    interleaved pick by pick on one scheduler), and of filling the --emit-endpoint-scores metadata."""
    table, scheduler, shared = warmed(endpoints, prompt_chars, seed, shape, config)
    candidates = table.live_slots()
    log = DecisionLog(table)
    plain, recorded, emitted = [], [], []
    gc.collect()
    for i, req in enumerate(timed_requests(shared, prompt_chars, picks)):
        record = i % 2 == 1
        scheduler.trace = record
        started = time.perf_counter()
        result = scheduler.schedule(req, table, candidates)
        if record:
            log.record(req, table.hostports[int(result.primary[0])], result.primary_profile, result.profile_results)
        (recorded if record else plain).append(time.perf_counter() - started)
        scheduler.pre_request(req, result, table)
    # the metadata apart: its garbage would land in the next pick's timing
    scheduler.trace = True
    gc.collect()
    for req in timed_requests(shared, prompt_chars, max(picks // 4, 1), first=picks):
        result = scheduler.schedule(req, table, candidates)
        response = pb.ProcessingResponse()
        started = time.perf_counter()
        set_endpoint_scores(response.dynamic_metadata.fields["envoy.lb"].struct_value.fields, result, table.hostports)
        emitted.append(time.perf_counter() - started)
        scheduler.pre_request(req, result, table)
    return (statistics.median(plain) * 1e6, statistics.median(recorded) * 1e6, statistics.median(emitted) * 1e6)


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def index_footprint(endpoints: int, entries: int, seed: int) -> tuple[float, float, int]:
    """Fill the index with 256-block requests until every endpoint holds `entries` distinct blocks."""
    gc.collect()
    before = rss_bytes()
    producer = ApproxPrefixCacheProducer("p", ApproxPrefixCacheProducer.parse_parameters({}, ""))
    index: PrefixIndex = producer.index
    rng = random.Random(seed)
    per_request = 256
    requests = entries // per_request + 1
    insert_times = []
    started_all = time.monotonic()
    for slot in range(endpoints):
        base = rng.getrandbits(63)
        for r in range(requests):
            hashes = [(base + r * per_request + b) * 0x9E3779B97F4A7C15 % (1 << 64) for b in range(per_request)]
            keys = as_keys(hashes)
            started = time.perf_counter()
            index.insert(slot, keys)
            insert_times.append(time.perf_counter() - started)
        if slot % 100 == 99:
            print(
                f"  index: {slot + 1}/{endpoints} endpoints filled ({time.monotonic() - started_all:.0f} s)", flush=True
            )
    gc.collect()
    held = len(index)
    used = rss_bytes() - before
    print(f"  index arrays: {index.nbytes / held:.1f} bytes/entry (table 2^{index.bits} buckets)")
    return used / held, statistics.median(insert_times) * 1e6, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", default="10,100,1000,10000")
    parser.add_argument("--prompts", default="500,8000,32000")
    parser.add_argument("--shapes", default="chat,conversation")
    parser.add_argument("--picks", type=int, default=2000)
    parser.add_argument("--index-endpoints", type=int, default=1000)
    parser.add_argument("--index-entries", type=int, default=31_250)
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--config", help="an EndpointPickerConfig file instead of the built-in default")
    parser.add_argument(
        "--lifecycle",
        action="store_true",
        help="each pick charged, its first chunk and its end delivered later, as the live path does (see Lifecycle); "
        "the insert column then includes the charge and the responses due",
    )
    parser.add_argument(
        "--recording",
        action="store_true",
        help="instead: the cost of tracing and recording each pick for /debug/decisions and of the endpoint-scores "
        "metadata (picks with and without interleaved)",
    )
    args = parser.parse_args()
    config = load_config_file(args.config) if args.config else None
    print(f"config: {args.config or 'built-in default'}")
    if args.recording:
        report_recording(args, config)
        return
    print(f"hash blocks of an 8k prompt: {len(block_hashes(b'x' * 8000, b'm', 64, 256))}")
    header = ("shape", "endpoints", "prompt", "p50 ms", "p99 ms", "max ms", "insert p50 ms")
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, (12, 9, 7, 8, 8, 8, 14), strict=True)))
    for shape in args.shapes.split(","):
        if shape not in ("chat", "conversation"):
            parser.error(f"--shapes: unknown shape {shape!r}; use chat and/or conversation")
        for endpoints in (int(x) for x in args.endpoints.split(",")):
            for chars in (int(x) for x in args.prompts.split(",")):
                p50, p99, worst, insert = time_picks(
                    endpoints, chars, args.picks, endpoints + chars, shape, config, args.lifecycle
                )
                print(
                    f"{shape:>12} {endpoints:>9} {chars:>7} {p50:>8.3f} {p99:>8.3f} {worst:>8.3f} {insert:>14.3f}",
                    flush=True,
                )
    if not args.skip_index:
        per_entry, insert_us, held = index_footprint(args.index_endpoints, args.index_entries, seed=1)
        print(
            f"prefix index: {held:,} (block, endpoint) entries at {args.index_endpoints} endpoints: "
            f"{per_entry:.1f} bytes/entry; insert of a 256-block request: median {insert_us:.1f} µs"
        )


def report_recording(args: argparse.Namespace, config: EndpointPickerConfig | None) -> None:
    header = ("shape", "endpoints", "prompt", "plain µs", "recorded µs", "overhead µs", "overhead", "scores µs")
    widths = (12, 9, 7, 9, 12, 12, 9, 10)
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, widths, strict=True)))
    for shape in args.shapes.split(","):
        for endpoints in (int(x) for x in args.endpoints.split(",")):
            for chars in (int(x) for x in args.prompts.split(",")):
                plain, recorded, emitted = time_recording(
                    endpoints, chars, args.picks, endpoints + chars, shape, config
                )
                print(
                    f"{shape:>12} {endpoints:>9} {chars:>7} {plain:>9.1f} {recorded:>12.1f} "
                    f"{recorded - plain:>12.1f} {(recorded / plain - 1) * 100:>8.1f}% {emitted:>10.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
