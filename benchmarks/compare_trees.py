"""Source trees of epp measured in one run, alternating process by process: the protocol core's per-request
Python (`benchmarks/extproc/core_micro.py`, CPU time of its thread) and the scheduler's decision p50
(`benchmarks/scheduler/run.py`, one shape, one size; the built-in default config, and each `--config FILE`, a
path inside the trees, so each tree reads its own copy).

    python benchmarks/compare_trees.py LABEL=DIR LABEL=DIR [...] [--rounds 8] [--requests 1000] [--picks 2000]
        [--config config/default-plugins.yaml ...]

Each tree runs its own copy of both benchmarks with its own virtual environment (DIR/.venv, made by
`scripts/venv.sh`), so each measures its own code. A tree whose core_micro has no `--clock` option (older
than the option) runs a copy of its own script with its timer changed to the thread's CPU clock, the same
clock `--clock cpu` selects. Each round runs every tree once, in an order that rotates from round to round.
Prints every process's figures, then per tree the medians and, for every later tree against every earlier
one, the median and range of the per-round ratios.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CORE_LINE = re.compile(r"(with|without) metrics: median ([\d.]+) µs/request")
PICK_LINE = re.compile(r"^\s*chat\s+(\d+)\s+(\d+)\s+([\d.]+)\s", re.M)
#: one benchmark process may take this long on a loaded machine before the run stops
PROCESS_TIMEOUT_S = 600.0


@dataclass
class Tree:
    label: str
    root: Path
    core: dict[str, list[float]] = field(default_factory=lambda: {"with": [], "without": []})
    #: per scheduler config ("" = the built-in default), the decision p50 of each round
    pick_p50_ms: dict[str, list[float]] = field(default_factory=dict)

    @property
    def python(self) -> str:
        return str(self.root / ".venv" / "bin" / "python")

    def core_command(self, requests: int, scratch: Path) -> list[str]:
        script = self.root / "benchmarks" / "extproc" / "core_micro.py"
        text = script.read_text()
        if "--clock" in text:
            return [self.python, str(script), "--requests", str(requests), "--clock", "cpu"]
        copy = scratch / f"core_micro_{self.label}.py"
        copy.write_text(text.replace("time.perf_counter()", "time.thread_time()"))
        return [self.python, str(copy), "--requests", str(requests)]

    def pick_command(self, picks: int, endpoints: int, prompt: int, config: str) -> list[str]:
        script = self.root / "benchmarks" / "scheduler" / "run.py"
        chosen = ["--config", str(self.root / config)] if config else []
        return [self.python, str(script), "--endpoints", str(endpoints), "--prompts", str(prompt),
                "--shapes", "chat", "--picks", str(picks), "--skip-index", *chosen]  # fmt: skip


def run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def ratios(later: list[float], earlier: list[float]) -> str:
    per_round = [a / b for a, b in zip(later, earlier, strict=True)]
    return f"median {statistics.median(per_round):.2f} ({min(per_round):.2f}-{max(per_round):.2f})"


def tree_argument(text: str) -> Tree:
    label, sep, folder = text.partition("=")
    if not sep or not label or not (Path(folder) / ".venv" / ".epp-installed").exists():
        raise argparse.ArgumentTypeError(
            f"{text!r}: use LABEL=DIR, DIR a tree whose .venv scripts/venv.sh has finished installing"
        )
    return Tree(label, Path(folder).resolve())


def measure(tree: Tree, args: argparse.Namespace, scratch: Path) -> None:
    for kind, value in CORE_LINE.findall(run(tree.core_command(args.requests, scratch), tree.root)):
        tree.core[kind].append(float(value))
    for config in args.configs:
        picks = PICK_LINE.findall(run(tree.pick_command(args.picks, args.endpoints, args.prompt, config), tree.root))
        if len(picks) != 1:
            raise SystemExit(f"{tree.label}: expected one chat row from the scheduler benchmark, got {picks}")
        tree.pick_p50_ms.setdefault(config, []).append(float(picks[0][2]))


def report(trees: list[Tree], args: argparse.Namespace) -> None:
    figures: dict[str, Callable[[Tree], list[float]]] = {
        "core per-request Python with metrics, µs": lambda t: t.core["with"],
        "core per-request Python without metrics, µs": lambda t: t.core["without"],
    }

    def p50s_of(config: str) -> Callable[[Tree], list[float]]:
        return lambda tree: tree.pick_p50_ms[config]

    for config in args.configs:
        title = f"scheduler decision p50, {config or 'built-in default'} ({args.endpoints} endpoints, "
        figures[title + f"{args.prompt}-char chat prompt), ms"] = p50s_of(config)
    for title, values in figures.items():
        print(f"{title}: " + ", ".join(f"{t.label} median {statistics.median(values(t)):.4g}" for t in trees))
        for i, later in enumerate(trees):
            for earlier in trees[:i]:
                print(f"  {later.label}/{earlier.label} per round: {ratios(values(later), values(earlier))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", type=tree_argument, nargs="+", help="LABEL=DIR, oldest first")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1000, help="core_micro requests per process")
    parser.add_argument("--picks", type=int, default=2000, help="scheduler decisions per process")
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--prompt", type=int, default=8000, help="prompt characters")
    parser.add_argument(
        "--config", action="append", default=[], help="also time the scheduler with this config (path in each tree)"
    )
    args = parser.parse_args()
    args.configs = ["", *args.config]
    trees: list[Tree] = args.trees
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(args.rounds):
            # the order rotates, so a drift in the machine's load falls on every tree alike
            for tree in trees[index % len(trees) :] + trees[: index % len(trees)]:
                started = time.time()
                measure(tree, args, Path(scratch))
                p50s = " / ".join(f"{tree.pick_p50_ms[c][-1]:.3f}" for c in args.configs)
                print(
                    f"round {index + 1} {tree.label:>8}: core {tree.core['with'][-1]:.1f} / "
                    f"{tree.core['without'][-1]:.1f} µs (with / without metrics), decision p50 {p50s} ms "
                    f"(default{''.join(' / ' + c for c in args.config)})  "
                    f"[{time.strftime('%H:%M:%S')}, {time.time() - started:.0f} s]",
                    flush=True,
                )
    report(trees, args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
