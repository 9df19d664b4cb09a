"""How often this machine stops a running Python thread, and for how long: the floor under any p99.

    python benchmarks/scheduler/stalls.py [--seconds 3] [--threshold-us 5]

A tight loop reads the clock; any gap between consecutive reads above the threshold is time the thread
did not run (timer interrupts and the hypervisor's exits on a VM, other processes). Prints the stalls
per second, their size distribution, and, for a piece of work of a given duration, the share of runs a
stall lands in — once that share passes 1 %, a p99 includes a stall.
"""

from __future__ import annotations

import argparse
import statistics
import time


def measure(seconds: float, threshold: float) -> list[float]:
    clock = time.perf_counter
    gaps: list[float] = []
    append = gaps.append
    start = previous = clock()
    end = start + seconds
    while previous < end:
        now = clock()
        if now - previous > threshold:
            append(now - previous)
        previous = now
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threshold-us", type=float, default=5.0)
    args = parser.parse_args()
    gaps = sorted(g * 1e6 for g in measure(args.seconds, args.threshold_us / 1e6))
    rate = len(gaps) / args.seconds
    print(f"stalls over {args.threshold_us:.0f} µs: {rate:.0f}/s")
    if gaps:
        quantiles = statistics.quantiles(gaps, n=20) if len(gaps) > 1 else [gaps[0]] * 19
        print(
            f"stall size µs: p25 {quantiles[4]:.0f}, p50 {quantiles[9]:.0f}, p75 {quantiles[14]:.0f}, "
            f"p90 {quantiles[17]:.0f}, max {gaps[-1]:.0f}"
        )
    for work_us in (25, 40, 60, 100):
        print(f"a {work_us} µs piece of work is hit in {rate * work_us / 1e6 * 100:.1f} % of runs")


if __name__ == "__main__":
    main()
