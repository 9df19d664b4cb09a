"""Runs the fuzz targets for a set time, replays or minimises their corpora.

    python -m fuzz list
    python -m fuzz run --seconds 600 [TARGET ...]      one target after another (all by default)
    python -m fuzz run --seconds 600 --merge body      ... then minimise what was found into fuzz/corpus/body
    python -m fuzz merge [TARGET ...]                  minimise an earlier run's scratch corpora into fuzz/corpus
    python -m fuzz replay [TARGET ...]                 every kept input once, without atheris (what the suite does)

A run grows a scratch corpus under --workdir seeded from fuzz/corpus/TARGET; findings (crash-*, timeout-*, oom-*)
are written under WORKDIR/TARGET/findings and printed. After a finding the target is restarted for the time left.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fuzz.targets import TARGETS

CORPUS = Path(__file__).resolve().parent / "corpus"
#: longest input per target: large enough for every seed, small enough to keep runs fast and corpora small
MAX_LEN = {"config": 4096, "migrate": 4096, "endpoints": 2048, "metrics": 8192, "watch": 8192}
DEFAULT_MAX_LEN = 4096
MAX_FINDINGS = 20


def corpus_files(name: str) -> list[Path]:
    folder = CORPUS / name
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def replay(names: list[str]) -> int:
    failures = 0
    for name in names:
        files = corpus_files(name)
        started = time.perf_counter()
        for path in files:
            try:
                TARGETS[name](path.read_bytes())
            except Exception as exc:
                failures += 1
                print(f"{name}: {path.name}: {type(exc).__name__}: {exc}"[:400])
        print(f"{name}: {len(files)} inputs replayed in {time.perf_counter() - started:.2f}s")
    return 1 if failures else 0


def _worker(name: str, flags: list[str], dirs: list[Path]) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "fuzz.worker", name, *flags, *map(str, dirs)]
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        itself = Path(tmp) / f"fuzz-{name}"  # what libFuzzer runs again for -merge
        itself.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fuzz.worker {name} "$@"\n')
        itself.chmod(0o755)
        env = {
            **os.environ,
            "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "EPP_FUZZ_SELF": str(itself),
        }
        return subprocess.run(command, cwd=root, env=env, capture_output=True, check=False)


def _stats(log: str) -> str:
    """The last libFuzzer status line (#runs cov ft corp exec/s)."""
    lines = [line for line in log.splitlines() if line.startswith("#") and "cov:" in line]
    return lines[-1] if lines else "(no status line)"


def run(name: str, seconds: float, workdir: Path, merge: bool) -> list[Path]:
    scratch = workdir / name / "corpus"
    findings = workdir / name / "findings"
    scratch.mkdir(parents=True, exist_ok=True)
    findings.mkdir(parents=True, exist_ok=True)
    seeds = CORPUS / name
    seeds.mkdir(parents=True, exist_ok=True)
    flags = [
        f"-max_len={MAX_LEN.get(name, DEFAULT_MAX_LEN)}",
        "-timeout=10",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={findings}/",
        "-print_final_stats=1",
    ]
    deadline = time.monotonic() + seconds
    found: list[Path] = []
    restarts = 0
    while (left := int(deadline - time.monotonic())) > 0 and restarts <= MAX_FINDINGS:
        result = _worker(name, [*flags, f"-max_total_time={left}"], [scratch, seeds])
        log = result.stderr.decode("utf-8", "replace")
        (workdir / name / f"run{restarts}.log").write_text(log)
        print(f"{name}: exit {result.returncode} after {seconds - (deadline - time.monotonic()):.0f}s: {_stats(log)}")
        if result.returncode == 0:
            break
        restarts += 1
        new = sorted(set(findings.iterdir()) - set(found))
        found.extend(new)
        for path in new:
            print(f"{name}: FINDING {path} ({path.stat().st_size} bytes)")
        tail = [line for line in log.splitlines() if "Error" in line or "Traceback" in line or "===" in line]
        print("\n".join(f"    {line}" for line in tail[:8]))
        if not new:  # it stopped without leaving an input: do not spin
            break
    if merge:
        minimise(name, scratch)
    return found


def minimise(name: str, scratch: Path) -> None:
    """Replaces fuzz/corpus/NAME by the smallest set of its inputs and the scratch corpus's that keeps their
    coverage (libFuzzer -merge); regression inputs (regress-*) are always kept."""
    seeds = CORPUS / name
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "merged"
        merged.mkdir()
        result = _worker(name, ["-merge=1", f"-max_len={MAX_LEN.get(name, DEFAULT_MAX_LEN)}"], [merged, seeds, scratch])
        if result.returncode != 0:
            print(f"{name}: merge failed (exit {result.returncode}); corpus left as it was")
            print(result.stderr.decode("utf-8", "replace")[-2000:])
            return
        for path in seeds.iterdir():
            if not path.name.startswith(("regress-", "seed-")):
                path.unlink()
        kept = {p.read_bytes() for p in seeds.iterdir()}
        added = 0
        for path in merged.iterdir():
            if path.read_bytes() not in kept:
                shutil.copy(path, seeds / path.name)
                added += 1
    print(f"{name}: corpus minimised to {len(corpus_files(name))} inputs ({added} from the merge)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fuzz", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the targets")
    run_parser = commands.add_parser("run", help="fuzz targets one after another")
    run_parser.add_argument("targets", nargs="*", metavar="TARGET", help=f"of {', '.join(TARGETS)}")
    run_parser.add_argument("--seconds", type=float, default=600, help="per target (default 600)")
    run_parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "epp-fuzz")
    run_parser.add_argument("--merge", action="store_true", help="minimise the scratch corpus into fuzz/corpus")
    merge_parser = commands.add_parser("merge", help="minimise a run's scratch corpora into fuzz/corpus")
    merge_parser.add_argument("targets", nargs="*", metavar="TARGET", help=f"of {', '.join(TARGETS)}")
    merge_parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "epp-fuzz")
    replay_parser = commands.add_parser("replay", help="run every kept input through its target once")
    replay_parser.add_argument("targets", nargs="*", metavar="TARGET", help=f"of {', '.join(TARGETS)}")
    args = parser.parse_args(argv)
    if args.command == "list":
        print("\n".join(f"{name}: {(TARGETS[name].__doc__ or '').splitlines()[0]}" for name in TARGETS))
        return 0
    names = args.targets or list(TARGETS)
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; targets: {', '.join(TARGETS)}")
    if args.command == "replay":
        return replay(names)
    if args.command == "merge":
        for name in names:
            minimise(name, args.workdir / name / "corpus")
        return 0
    findings = []
    for name in names:
        findings += run(name, args.seconds, args.workdir, args.merge)
    print(f"{len(findings)} finding(s)" + "".join(f"\n  {path}" for path in findings))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
