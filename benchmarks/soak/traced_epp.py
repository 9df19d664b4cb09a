"""epp under tracemalloc: the soak's way to see what grows in epp's heap (benchmark harness only).

    python benchmarks/soak/traced_epp.py DIR <epp flags>

Starts tracemalloc (frames from EPP_TRACEMALLOC_FRAMES, default 12), then runs epp as `epp.cli` would. Every
EPP_TRACEMALLOC_EVERY seconds (default 60) a thread writes the snapshot to DIR/snapshot-NNN.pickle (NNN: the
minute since start). `python benchmarks/soak/heapdiff.py DIR/snapshot-003.pickle DIR/snapshot-010.pickle`
shows what grew between two of them, grouped by traceback.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path


def dump_every(directory: Path, every_s: float, started: float) -> None:
    index = 0
    while True:
        index += 1
        time.sleep(max(0.0, started + index * every_s - time.monotonic()))
        minute = round((time.monotonic() - started) / 60)
        # only epp's own allocations: the snapshot itself and tracemalloc's frames are excluded by filters
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        snapshot.dump(str(directory / f"snapshot-{minute:03d}.pickle"))


def main() -> int:
    if len(sys.argv) < 2:
        raise SystemExit("usage: traced_epp.py DIR <epp flags>")
    directory = Path(sys.argv[1])
    directory.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(int(os.environ.get("EPP_TRACEMALLOC_FRAMES", "12")))
    every_s = float(os.environ.get("EPP_TRACEMALLOC_EVERY", "60"))
    threading.Thread(target=dump_every, args=(directory, every_s, time.monotonic()), daemon=True).start()
    from epp.cli import main as epp_main

    return epp_main(sys.argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())
