"""What grew in epp's heap between two tracemalloc snapshots written by traced_epp.py.

    python benchmarks/soak/heapdiff.py EARLIER.pickle LATER.pickle [--top 25] [--key lineno]

Only Python's allocations are traced: memory that C extensions take with malloc (gRPC core, protobuf's upb
arenas) does not show here even when RSS grows.
"""

from __future__ import annotations

import argparse
import tracemalloc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("earlier")
    parser.add_argument("later")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--key", choices=("traceback", "lineno", "filename"), default="traceback")
    parser.add_argument("--frames", type=int, default=8, help="frames shown per traceback")
    args = parser.parse_args(argv)
    earlier = tracemalloc.Snapshot.load(args.earlier)
    later = tracemalloc.Snapshot.load(args.later)
    total_before = sum(stat.size for stat in earlier.statistics("filename"))
    total_after = sum(stat.size for stat in later.statistics("filename"))
    print(f"traced: {total_before / 2**20:.2f} MiB -> {total_after / 2**20:.2f} MiB "
          f"({(total_after - total_before) / 2**20:+.2f} MiB)")  # fmt: skip
    for stat in later.compare_to(earlier, args.key)[: args.top]:
        print(f"\n{stat.size_diff / 1024:+.1f} KiB ({stat.count_diff:+d} blocks), now {stat.size / 1024:.1f} KiB")
        for line in stat.traceback.format(limit=args.frames, most_recent_first=True):
            print("   ", line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
