"""epp's whole process — flags, health, metrics, scrape plane, TLS, drain — with the bare servicer in place
of epp's own: what serving costs without epp's per-request code, measured in the same run as epp.

    python benchmarks/extproc/epp_shell.py <epp flags, including --endpoints host:port,...>

The bare servicer (bare_server.py) routes round-robin over the `--endpoints` given.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bare_server import BareServicer

import epp.app
from epp.cli import main as epp_main


class ShellServicer(BareServicer):
    """The bare servicer with the two counters epp's stream gauges read."""

    streams_in_flight = 0
    streams_total = 0


def endpoints_of(args: list[str]) -> list[str]:
    for i, arg in enumerate(args):
        if arg == "--endpoints" and i + 1 < len(args):
            return args[i + 1].split(",")
        if arg.startswith("--endpoints="):
            return arg.split("=", 1)[1].split(",")
    raise SystemExit("epp_shell.py needs --endpoints host:port[,host:port...] (the bare servicer's backends)")


def main() -> int:
    args = sys.argv[1:]
    backends = endpoints_of(args)

    def servicer(new_stream: Any, flow: Any = None) -> ShellServicer:
        return ShellServicer(backends)

    epp.app.ExtProcServicer = servicer  # type: ignore[assignment,misc]
    return epp_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
