"""Cost of reading one scraped page (epp.datalayer.extract) for each engine's fixture page, with the per-server
offset hints the scrape plane keeps: the label reader must stay a `bytes.find` on pages without escapes.

    python benchmarks/hostile/extract_pages.py [--rounds 30] [--per-round 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from epp.datalayer.extract import extract
from epp.datalayer.params import BUILTIN_ENGINES

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "metrics"
PAGES = {"vllm": "vllm.txt", "sglang": "sglang.txt", "trtllm-serve": "trtllm.txt", "triton-tensorrt-llm": "triton.txt"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--per-round", type=int, default=200)
    args = parser.parse_args()
    for engine, name in PAGES.items():
        page = (FIXTURES / name).read_bytes()
        config = BUILTIN_ENGINES[engine]
        hints: dict[bytes, int] = {}
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            for _ in range(args.per_round):
                extract(page, config, hints)
            times.append((time.perf_counter() - started) / args.per_round)
        print(f"{engine:20s} {len(page):6d} bytes: median {statistics.median(times) * 1e6:6.1f} us per page")


if __name__ == "__main__":
    main()
