"""The per-operation cost of sharing state between replicas (no Redis: what epp's own Python spends).

- request path: handing one pick's prefix insert to the outbox;
- writer (every 10 ms): finding the endpoints whose own load changed, encoding a batch of inserts;
- reader: decoding a peer's insert batch and inserting it into this replica's prefix index, folding a peer's
  load report into the columns.
Medians of --repeat timed runs, in µs per operation.

`python benchmarks/shared/run.py [--endpoints 16,1000] [--blocks 16,256]`
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from epp.datastore.table import Endpoint, EndpointTable
from epp.plugins.prefix import ApproxPrefixCacheProducer, PrefixParameters
from epp.shared.codec import DELTA, decode_inserts, decode_load, encode_inserts, encode_load
from epp.shared.columns import SharedColumns
from epp.shared.inserts import InsertOutbox, InsertRecord, apply_inserts


def timed(operation: Callable[[], object], count: int, repeat: int) -> float:
    """Median µs per call over `repeat` runs of `count` calls."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(count):
            operation()
        runs.append((time.perf_counter() - started) / count * 1e6)
    return statistics.median(runs)


def pool(endpoints: int) -> EndpointTable:
    table = EndpointTable(max(endpoints, 16))
    for i in range(endpoints):
        table.add(Endpoint(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 8000, name=f"pod-{i}"))
    return table


def measure_inserts(table: EndpointTable, blocks: int, repeat: int, rng: np.random.Generator) -> None:
    endpoints = len(table)
    slots = table.live_slots()
    keys = [rng.integers(2, 2**63, blocks, dtype=np.uint64) for _ in range(64)]
    outbox = InsertOutbox("prefix", table, 1 << 30, lambda n: None)
    picks = [[int(s)] for s in rng.choice(slots, 64)]
    step = iter(range(1 << 62))

    def hand_over() -> None:
        i = next(step) % 64
        outbox(picks[i], keys[i])

    cost = timed(hand_over, 2000, repeat)
    print(f"| request path: insert to the outbox | {endpoints} | {blocks} | {cost:.2f} |")
    records = [InsertRecord((table.hostports[p[0]],), k, 0.0) for p, k in zip(picks, keys, strict=True)]
    batch = records[:13]  # 10 ms of inserts at 1,300 requests/s
    cost = timed(lambda: encode_inserts("a", "prefix", batch), 200, repeat) / len(batch)
    print(f"| writer: encode, per insert (batches of 13) | {endpoints} | {blocks} | {cost:.2f} |")
    producer = ApproxPrefixCacheProducer("prefix", PrefixParameters())
    producer.bind(table)
    fields = encode_inserts("a", "prefix", batch)

    def apply() -> None:
        decoded = decode_inserts(fields)
        apply_inserts(producer, table, decoded.hostports, decoded.keys)

    cost = timed(apply, 50, repeat) / len(batch)
    print(f"| reader: decode and insert into the index, per insert | {endpoints} | {blocks} | {cost:.2f} |")


def measure_load(table: EndpointTable, repeat: int, rng: np.random.Generator) -> None:
    endpoints = len(table)
    columns = SharedColumns(table)
    for name in ("inflight_requests", "inflight_tokens", "inflight_prompt_tokens"):
        columns.register(f"inflight/{name}", getattr(table, name))
    slots = table.live_slots()
    changed = slots[: max(1, len(slots) // 10)]

    def writer_tick() -> None:
        table.inflight_requests[changed] += 1.0
        columns.changes()

    cost = timed(writer_tick, 200, repeat)
    print(f"| writer: own changes of a tick (a tenth of endpoints changed) | {endpoints} | - | {cost:.1f} |")
    hostports = [table.hostports[int(s)] for s in changed]
    report = encode_load("b", 0.0, DELTA, columns.names, hostports, rng.random((len(hostports), 3)))

    def fold() -> None:
        decoded = decode_load(report)
        columns.receive("b", decoded.names, decoded.hostports, decoded.values, False, 0.0)

    cost = timed(fold, 200, repeat)
    print(f"| reader: decode and fold a report of {len(hostports)} endpoints | {endpoints} | - | {cost:.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoints", default="16,1000")
    parser.add_argument("--blocks", default="16,256", help="prefix blocks per insert (1 KB ≈ 16, 16 KB ≈ 256)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    print("| operation | endpoints | blocks | µs per operation |")
    print("|---|---:|---:|---:|")
    for endpoints in (int(v) for v in args.endpoints.split(",")):
        for blocks in (int(v) for v in args.blocks.split(",")):
            measure_inserts(pool(endpoints), blocks, args.repeat, rng)
        measure_load(pool(endpoints), args.repeat, rng)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
