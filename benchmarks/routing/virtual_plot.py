"""Plot a virtual-fleet sweep: each config's TTFT p90 over the best peer policy's, per workload and load.

    python benchmarks/routing/virtual_plot.py benchmarks/routing/results/virtual-8x4800-20261207-peers.md

Reads the rows `virtual_fleet.py` printed (one per workload, load, seed and config) and writes a PNG beside
the file: one bar group per workload and load, one bar per config (the median over seeds of its p90 / the
best peer's p90 in the same seed), a line at 1. The peers are the policies of virtual_peers.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from virtual_peers import PEER_POLICIES

Row = tuple[str, str, str]  # workload, load, seed
#: the harness's config names as the plot's legend says them
LEGEND = {"recommended": "built-in default", "default": "reference blend (default-plugins)"}


def read_p90(path: Path) -> dict[Row, dict[str, float]]:
    """{(workload, load, seed): {config: TTFT p90}} from a markdown table of virtual_fleet.py's rows."""
    rows: dict[Row, dict[str, float]] = defaultdict(dict)
    for line in path.read_text().splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) < 8 or cells[1] in ("workload", "") or cells[1].startswith("-"):
            continue
        rows[(cells[1], cells[2], cells[3])][cells[4]] = float(cells[6])
    if not rows:
        raise SystemExit(f"{path}: no rows of virtual_fleet.py's table found")
    return rows


def ratios(rows: dict[Row, dict[str, float]]) -> tuple[list[str], dict[str, list[float]]]:
    """Per (workload, load) label, each config's median over seeds of p90 / the best peer's p90."""
    per_label: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (workload, load, _), configs in sorted(rows.items()):
        peers = [configs[name] for name in PEER_POLICIES if name in configs]
        if not peers:
            continue
        best = max(min(peers), 1e-9)
        for config, p90 in configs.items():
            per_label[f"{workload}\n{load}x"][config].append(p90 / best)
    labels = list(per_label)
    names = sorted({config for values in per_label.values() for config in values})
    return labels, {
        config: [statistics.median(per_label[label][config]) if per_label[label][config] else float("nan")
                 for label in labels]
        for config in names
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    args = parser.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit('matplotlib is not installed: EPP_EXTRAS=test,bench source scripts/venv.sh ""') from None
    labels, by_config = ratios(read_p90(args.results))
    figure, axis = plt.subplots(figsize=(max(8.0, 0.9 * len(labels)), 4.5))
    width = 0.8 / len(by_config)
    for i, (config, values) in enumerate(by_config.items()):
        axis.bar([j + i * width for j in range(len(labels))], values, width, label=LEGEND.get(config, config))
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.set_yscale("log")
    axis.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, fontsize=8)
    axis.set_ylabel("TTFT p90 / best peer's (median over seeds)")
    axis.set_title(args.results.stem)
    axis.grid(True, axis="y", which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    out = args.results.with_suffix(".png")
    figure.savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
