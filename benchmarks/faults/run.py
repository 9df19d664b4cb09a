"""Faults under steady load: real Envoy, two epp replicas, simulated vLLM pods discovered through kubesim.

For each fault a steady open-loop load runs through Envoy (`--rate` streaming completions per second); the fault
is injected after a few seconds, observed, then healed; the load stops and the EPPs are read once quiet.
Each row reports: requests sent during the scenario, requests failed that were not bound to the failed part
(Envoy's access log names the endpoint each request was routed to), requests failed that were, the time from
the fault until the EPPs routed around it (no request routed to the failed server after that; for discovery
faults, until a pod added after the fault gets traffic and a pod deleted after it gets none), both EPPs'
in-flight counters once quiet (every one must read 0), and their RSS and open fds before and after.

    python benchmarks/faults/run.py                      # every fault (about 6 minutes)
    python benchmarks/faults/run.py --faults kill,hang   # some of them
    python benchmarks/faults/run.py --list
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from clients import SteadyLoad, big_body, disconnect_mid_stream, headers_without_body  # noqa: E402
from stack import Binding, Stack, read_access_log  # noqa: E402

from kubesim.kubelet import SimPod  # noqa: E402
from kubesim.testing import wait_until  # noqa: E402


@dataclass
class Row:
    fault: str
    sent: int = 0
    failed_unbound: int = 0
    failed_bound: int = 0
    recover_s: float | None = None
    inflight_after: dict[str, float] = field(default_factory=dict)
    rss_mb_before: list[float] = field(default_factory=list)
    rss_mb_after: list[float] = field(default_factory=list)
    fds_before: list[int] = field(default_factory=list)
    fds_after: list[int] = field(default_factory=list)
    note: str = ""


@dataclass
class Scenario:
    """What one fault run saw: the load's requests and Envoy's binding of each, and the fault's own facts."""

    stack: Stack
    load: SteadyLoad
    fault_at: float = 0.0
    failed_endpoints: set[str] = field(default_factory=set)
    bindings: dict[str, Binding] = field(default_factory=dict)

    def bound(self, request_id: str) -> str:
        binding = self.bindings.get(request_id)
        return binding.endpoint if binding is not None else "?"

    def failures(self) -> tuple[int, int]:
        unbound = bound = 0
        for record in self.load.sent:
            if record.result.ok:
                continue
            if self.bound(record.id) in self.failed_endpoints:
                bound += 1
            else:
                unbound += 1
        return unbound, bound

    def last_routed_to(self, endpoints: set[str]) -> float | None:
        """Seconds from the fault to the last request sent that was routed to one of `endpoints`."""
        times = [r.sent for r in self.load.sent if r.sent >= self.fault_at and self.bound(r.id) in endpoints]
        return max(times) - self.fault_at if times else 0.0

    def first_routed_to(self, endpoints: set[str]) -> float | None:
        times = [r.sent for r in self.load.sent if r.sent >= self.fault_at and self.bound(r.id) in endpoints]
        return min(times) - self.fault_at if times else None


def endpoint_of(pod: SimPod) -> str:
    return f"{pod.ip}:8000"


# --- the faults -----------------------------------------------------------------------------------------------
# Each takes the scenario after the warm-up, injects the fault, waits, heals; returns (recover_s, note).


def fault_kill(s: Scenario, window: float) -> tuple[float | None, str]:
    pod = s.stack.pod_list()[0]
    s.failed_endpoints = {endpoint_of(pod)}
    s.fault_at = time.monotonic()
    pod.process.kill()
    time.sleep(window)
    s.stack.reap(pod)  # the kubelet would restart it; a fresh pod replaces it
    s.stack.add_pod()
    return None, "SIGKILL of one pod's server; its Pod stays Ready (the kubelet has not noticed yet)"


def fault_hang(s: Scenario, window: float) -> tuple[float | None, str]:
    pod = s.stack.pod_list()[0]
    s.failed_endpoints = {endpoint_of(pod)}
    s.fault_at = time.monotonic()
    os.kill(pod.process.pid, signal.SIGSTOP)
    time.sleep(window)
    os.kill(pod.process.pid, signal.SIGCONT)
    return None, "SIGSTOP of one pod's server for the window, then SIGCONT"


def _metrics_mode(mode: str) -> Callable[[Scenario, float], tuple[float | None, str]]:
    def inject(s: Scenario, window: float) -> tuple[float | None, str]:
        pod = s.stack.pod_list()[0]
        assert s.stack.proxies is not None
        s.failed_endpoints = {endpoint_of(pod)}
        s.fault_at = time.monotonic()
        s.stack.proxies.modes[pod.ip] = mode
        time.sleep(window)
        s.stack.proxies.modes[pod.ip] = "pass"
        share = sum(1 for r in s.load.sent if r.sent >= s.fault_at and s.bound(r.id) in s.failed_endpoints)
        total = sum(1 for r in s.load.sent if r.sent >= s.fault_at)
        return None, f"one pod's /metrics {mode} for the window; it served {share}/{total} of the requests meanwhile"

    return inject


def _discovery_fault(
    name: str, action: Callable[[Stack], None]
) -> Callable[[Scenario, float], tuple[float | None, str]]:
    def inject(s: Scenario, window: float) -> tuple[float | None, str]:
        stack = s.stack
        victim = stack.pod_list()[0]
        s.fault_at = time.monotonic()
        action(stack)
        # discovery must catch up with both an addition and a deletion made while it recovers
        newcomer = stack.add_pod()
        stack.delete_pod(victim, stop_process=False)  # the server keeps serving: late requests still succeed
        gone, new = {endpoint_of(victim)}, {endpoint_of(newcomer)}
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            time.sleep(0.25)
            s.bindings = read_access_log(stack.access_log)
            first_new = s.first_routed_to(new)
            if first_new is not None and time.monotonic() - s.fault_at - s.last_routed_to(gone) > 2.0:  # type: ignore[operator]
                break
        s.bindings = read_access_log(stack.access_log)
        first_new = s.first_routed_to(new)
        last_gone = s.last_routed_to(gone)
        stack.reap(victim)
        recover = None if first_new is None else max(first_new, last_gone or 0.0)
        return recover, (
            f"{name}; then a pod added (first routed to after {_s(first_new)}) and one deleted (last routed to "
            f"after {_s(last_gone)})"
        )

    return inject


def _drop_watches(stack: Stack) -> None:
    assert stack.kube is not None
    stack.kube.drop_watches(abrupt=True)


def _gone(stack: Stack) -> None:
    assert stack.kube is not None
    stack.kube.compact()
    stack.kube.drop_watches(abrupt=True)


def _restart_api_server(stack: Stack) -> None:
    kube = stack.kube
    assert kube is not None and kube._loop is not None
    asyncio.run_coroutine_threadsafe(kube.sim.stop(), kube._loop).result(10)
    time.sleep(2.0)
    asyncio.run_coroutine_threadsafe(kube.sim.start(), kube._loop).result(10)


def fault_epp_sigterm(s: Scenario, window: float) -> tuple[float | None, str]:
    stack = s.stack
    first = stack.epps[0]
    assert first.process is not None
    s.fault_at = time.monotonic()
    first.process.send_signal(signal.SIGTERM)
    code = first.process.wait(30)
    drained = time.monotonic() - s.fault_at
    time.sleep(max(0.0, window - drained))
    stack.restart_epp(0)
    wait_until(lambda: stack.ready_pods(stack.epps[0]) == stack.pods, 20, what="restarted EPP sees every pod")
    return drained, f"one of two EPP replicas SIGTERMed (exit {code} after draining {drained:.1f} s), then restarted"


def _hostile(
    make: Callable[[int], Any], what: Callable[[Any], str]
) -> Callable[[Scenario, float], tuple[float | None, str]]:
    def inject(s: Scenario, window: float) -> tuple[float | None, str]:
        s.fault_at = time.monotonic()
        assert s.stack.envoy is not None
        outcome = asyncio.run(make(s.stack.envoy.listener_port))
        return None, what(outcome)

    return inject


FAULTS: dict[str, Callable[[Scenario, float], tuple[float | None, str]]] = {
    "kill": fault_kill,
    "hang": fault_hang,
    "slow-metrics": _metrics_mode("slow"),
    "garbage-metrics": _metrics_mode("garbage"),
    "watch-dropped": _discovery_fault("every watch connection reset", _drop_watches),
    "watch-410": _discovery_fault("history compacted and watches reset: re-watch answered 410 Gone", _gone),
    "apiserver-restart": _discovery_fault("the test API server stopped for 2 s and restarted", _restart_api_server),
    "epp-sigterm": fault_epp_sigterm,
    "disconnects": _hostile(
        lambda port: disconnect_mid_stream(port, 10_000, 200, "gone"),
        lambda out: f"10,000 clients that reset their connection mid-stream, 200 at a time: {out}",
    ),
    "no-body": _hostile(
        lambda port: headers_without_body(port, 10_000, 20.0, "nobody"),
        lambda out: f"10,000 concurrent streams that send headers and never the body, held 20 s: {out}",
    ),
    "body-10MB": _hostile(
        lambda port: big_body(port, 10 * 1024 * 1024, "big10"),
        lambda out: f"one 10 MB body: HTTP {out[0]} after {out[1]:.1f} s",
    ),
    "body-100MB": _hostile(
        lambda port: big_body(port, 100 * 1024 * 1024, "big100"),
        lambda out: f"one 100 MB body: HTTP {out[0]} after {out[1]:.1f} s",
    ),
}
ROUTE_AROUND = ("kill", "hang")


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def run_fault(stack: Stack, name: str, rate: float, warmup: float, window: float) -> Row:
    assert stack.envoy is not None
    row = Row(name)
    before = stack.epp_samples()
    row.rss_mb_before = [round(p.rss_mb, 1) for p in before]
    row.fds_before = [p.fds for p in before]
    load = SteadyLoad(stack.envoy.listener_port, rate, prefix=name)
    scenario = Scenario(stack, load)
    load.start()
    time.sleep(warmup)
    recover, row.note = FAULTS[name](scenario, window)
    time.sleep(2.0)
    load.stop()
    time.sleep(0.5)  # the access log is written at stream end
    scenario.bindings = read_access_log(stack.access_log)
    row.sent = len(load.sent)
    row.failed_unbound, row.failed_bound = scenario.failures()
    if name in ROUTE_AROUND:
        recover = scenario.last_routed_to(scenario.failed_endpoints)
    row.recover_s = recover
    row.inflight_after = stack.wait_quiet()
    after = stack.epp_samples()
    row.rss_mb_after = [round(p.rss_mb, 1) for p in after]
    row.fds_after = [p.fds for p in after]
    return row


def table(rows: list[Row]) -> str:
    lines = [
        "| fault | sent | failed (not bound to the fault) | failed (bound to it) | route around / recover | "
        "in-flight after (charged req, tokens, streams, running) | epp RSS MB before → after | fds before → after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        inflight = ", ".join(f"{v:g}" for v in row.inflight_after.values())
        rss = " / ".join(f"{a:.0f} → {b:.0f}" for a, b in zip(row.rss_mb_before, row.rss_mb_after, strict=False))
        fds = " / ".join(f"{a} → {b}" for a, b in zip(row.fds_before, row.fds_after, strict=False))
        recover = "n/a" if row.recover_s is None else f"{row.recover_s:.2f} s"
        lines.append(
            f"| {row.fault} | {row.sent} | {row.failed_unbound} | {row.failed_bound} | {recover} | {inflight} | "
            f"{rss} | {fds} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, of: " + ", ".join(FAULTS))
    parser.add_argument("--rate", type=float, default=20.0, help="steady load, requests per second (default 20)")
    parser.add_argument("--pods", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each fault")
    parser.add_argument("--window", type=float, default=8.0, help="seconds a fault lasts (or is watched)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(FAULTS))
        return 0
    names = [n.strip() for n in args.faults.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    workdir = Path(tempfile.mkdtemp(prefix="epp-faults-"))
    stack = Stack(pods=args.pods, workdir=workdir, epp_args=["--stream-idle-timeout", "10s"])
    rows: list[Row] = []
    started = time.monotonic()
    try:
        stack.start()
        for name in names:
            row = run_fault(stack, name, args.rate, args.warmup, args.window)
            rows.append(row)
            print(f"{name}: {json.dumps(asdict(row))}", flush=True)
        failures = stack.background_failures()
    except BaseException:
        for index, epp in enumerate(stack.epps):
            print(f"--- epp {index} log ---\n{epp.log()}", file=sys.stderr)
        raise
    finally:
        stack.stop()
    print()
    print(table(rows))
    print(f"\nbackground task failures (both EPPs): {failures:g}; {time.monotonic() - started:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
