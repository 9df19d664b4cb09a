"""Soak: epp under half its measured capacity for a long run while everything around it changes.

The stack of benchmarks/faults (kubesim, simulated vLLM pods each with a /metrics fault proxy, epp discovering
the pool, real Envoy). First a closed-loop probe measures what the stack serves on this machine; then an
open-loop load at half that runs for --minutes while
- an endpoint joins or leaves every second (a pod is added, or the oldest extra one is deleted: its Pod object
  first, its server a few seconds later, as a rolling update does);
- every 10 s one pod's /metrics turns slow (1 s) or garbage for 5 s;
- every 5 s the InferenceModelRewrite that splits the `soak` model between two adapters changes its weights
  (a third of the requests ask for `soak`).
Each minute it samples epp's RSS, open fds, threads, asyncio and background tasks, the in-flight counters, the
pods it knows and its background-task failures; at the end it stops the load and checks the in-flight counters
read 0. The table goes to stdout (markdown) and --json.

    python benchmarks/soak/run.py --minutes 30
    python benchmarks/soak/run.py --minutes 2 --probe-seconds 5     # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "faults"))
sys.path.insert(0, str(HERE.parents[1]))

from clients import MAX_LAG_S, MODEL, SteadyLoad  # noqa: E402
from stack import Stack, epp_metrics  # noqa: E402

from kubesim.kubelet import SimPod  # noqa: E402

ADAPTERS = ("soak-a", "soak-b")
BASE_PODS = 4
MAX_EXTRA_PODS = 2
TASK_FAMILIES = ("epp_asyncio_tasks", "epp_background_tasks", "epp_background_task_failures_total")


def rewrite(weight_a: int) -> dict[str, object]:
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
        "kind": "InferenceModelRewrite",
        "metadata": {"name": "soak-split", "namespace": "default"},
        "spec": {
            "poolRef": {"group": "inference.networking.k8s.io", "name": "pool"},
            "rules": [
                {
                    "matches": [{"model": {"type": "Exact", "value": "soak"}}],
                    "targets": [
                        {"modelRewrite": ADAPTERS[0], "weight": weight_a},
                        {"modelRewrite": ADAPTERS[1], "weight": 100 - weight_a},
                    ],
                }
            ],
        },
    }


class MixedLoad(SteadyLoad):
    """The steady load with every third request asking for the rewritten `soak` model."""

    def model_for(self, index: int) -> str:
        return "soak" if index % 3 == 0 else MODEL


async def probe(port: int, seconds: float, concurrency: int = 16) -> float:
    """Requests per second the stack completes with `concurrency` clients back to back."""
    done = 0
    deadline = time.monotonic() + seconds
    body = {"model": MODEL, "prompt": "probe", "max_tokens": 8}
    async with aiohttp.ClientSession(trust_env=False) as session:

        async def client() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                async with session.post(f"http://127.0.0.1:{port}/v1/completions", json=body) as response:
                    await response.read()
                    done += response.status == 200

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return done / (time.monotonic() - started)


class Churn(threading.Thread):
    """Pods join and leave every second, metrics faults every 10 s, rewrite weights every 5 s."""

    def __init__(self, stack: Stack, seed: int = 5) -> None:
        super().__init__(name="churn", daemon=True)
        self.stack = stack
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.extra: list[SimPod] = []
        self.leaving: list[tuple[float, SimPod]] = []
        self.joins = self.leaves = self.metric_faults = self.rewrites = 0
        self.errors: list[str] = []

    def run(self) -> None:
        tick = 0
        faulty: tuple[float, str] | None = None
        assert self.stack.kube is not None and self.stack.proxies is not None
        while not self.halt.wait(1.0):
            tick += 1
            try:
                now = time.monotonic()
                for due, pod in [item for item in self.leaving if item[0] <= now]:
                    self.leaving.remove((due, pod))
                    self.stack.reap(pod)
                if len(self.extra) < MAX_EXTRA_PODS and (not self.extra or self.rng.random() < 0.5):
                    self.extra.append(self.stack.add_pod())
                    self.joins += 1
                else:
                    pod = self.extra.pop(0)
                    self.stack.delete_pod(pod, stop_process=False)  # the object goes; its server drains
                    self.leaving.append((now + 5.0, pod))
                    self.leaves += 1
                if faulty is not None and faulty[0] <= now:
                    self.stack.proxies.modes[faulty[1]] = "pass"
                    faulty = None
                if tick % 10 == 0:
                    pod = self.rng.choice(self.stack.pod_list())
                    self.stack.proxies.modes[pod.ip] = self.rng.choice(["slow", "garbage"])
                    faulty = (now + 5.0, pod.ip)
                    self.metric_faults += 1
                if tick % 5 == 0:
                    self.stack.kube.apply(rewrite(self.rng.randrange(0, 101)))
                    self.rewrites += 1
            except Exception as exc:  # keep churning; the report lists what went wrong
                self.errors.append(f"{type(exc).__name__}: {exc}")
        for _, pod in self.leaving:
            self.stack.reap(pod)
        self.leaving.clear()


@dataclass
class Sample:
    at: float  # time.monotonic()
    minute: float
    sent: int
    failed: int
    rss_mb: float
    fds: int
    threads: int
    asyncio_tasks: float
    background_tasks: float
    task_failures: float
    inflight_requests: float
    streams_in_flight: float
    pods_known: float
    #: HTTP status of the failed requests (0: no response, e.g. a client timeout) -> how many
    failures: dict[int, int] = field(default_factory=dict)


def sample(stack: Stack, load: SteadyLoad, started: float, since: int) -> Sample:
    epp = stack.epps[0]
    process = stack.epp_samples()[0]
    inflight = stack.inflight()
    counts = epp_metrics(epp, TASK_FAMILIES)
    window = load.sent[since:]
    return Sample(
        at=time.monotonic(),
        minute=round((time.monotonic() - started) / 60, 2),
        sent=len(window),
        failed=sum(1 for r in window if r.done and not r.result.ok),
        rss_mb=round(process.rss_mb, 1),
        fds=process.fds,
        threads=process.threads,
        asyncio_tasks=counts["epp_asyncio_tasks"],
        background_tasks=counts["epp_background_tasks"],
        task_failures=counts["epp_background_task_failures_total"],
        inflight_requests=inflight["inference_extension_endpoint_inflight_requests"],
        streams_in_flight=inflight["inference_extension_extproc_streams_in_flight"],
        pods_known=epp_metrics(epp, ("inference_pool_endpoints",))["inference_pool_endpoints"],
    )


def table(samples: list[Sample]) -> str:
    lines = [
        "| minute | sent | failed | RSS MB | fds | threads | asyncio tasks | background tasks | task failures | "
        "in-flight charged | streams open | endpoints known |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in samples:
        statuses = ", ".join(f"HTTP {status or 'none'}: {count}" for status, count in sorted(s.failures.items()))
        failed = f"{s.failed} ({statuses})" if statuses else str(s.failed)
        lines.append(
            f"| {s.minute:g} | {s.sent} | {failed} | {s.rss_mb:.1f} | {s.fds} | {s.threads} | {s.asyncio_tasks:g} | "
            f"{s.background_tasks:g} | {s.task_failures:g} | {s.inflight_requests:g} | {s.streams_in_flight:g} | "
            f"{s.pods_known:g} |"
        )
    return "\n".join(lines)


def runtime_entry(entry: str) -> tuple[str, bool | float | str]:
    """`KEY=VALUE` of --envoy-runtime: true/false become booleans and numbers numbers, as Envoy's runtime reads them."""
    key, sep, value = entry.partition("=")
    if not sep or not key:
        raise SystemExit(f"--envoy-runtime {entry!r}: expected KEY=VALUE")
    if value in ("true", "false"):
        return key, value == "true"
    try:
        return key, float(value)
    except ValueError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--probe-seconds", type=float, default=15.0)
    parser.add_argument("--share", type=float, default=0.5, help="of the probed capacity (default 0.5)")
    parser.add_argument("--warmup-minutes", type=float, default=5.0, help="RSS growth is measured after this")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--tracemalloc", type=Path, metavar="DIR",
        help="run epp under tracemalloc, a heap snapshot into DIR each minute (benchmarks/soak/heapdiff.py)",
    )  # fmt: skip
    parser.add_argument(
        "--envoy-runtime", action="append", default=[], metavar="KEY=VALUE",
        help="set an Envoy runtime key (e.g. envoy.reloadable_features.ext_proc_graceful_grpc_close=false)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    runtime = dict(runtime_entry(entry) for entry in args.envoy_runtime)
    workdir = Path(tempfile.mkdtemp(prefix="epp-soak-"))
    sim_args = ["--lora-modules", *ADAPTERS, "--max-loras", "2"]
    launcher = [sys.executable, str(HERE / "traced_epp.py"), str(args.tracemalloc)] if args.tracemalloc else None
    stack = Stack(pods=BASE_PODS, replicas=1, workdir=workdir, sim_args=sim_args, epp_launcher=launcher,
                  epp_args=["--stream-idle-timeout", "30s"], envoy_runtime=runtime)  # fmt: skip
    samples: list[Sample] = []
    churn: Churn | None = None
    load: MixedLoad | None = None
    try:
        stack.start()
        assert stack.envoy is not None and stack.kube is not None
        stack.kube.apply(rewrite(50))
        capacity = asyncio.run(probe(stack.envoy.listener_port, args.probe_seconds))
        rate = max(1.0, capacity * args.share)
        print(f"capacity {capacity:.1f} req/s (closed loop, 16 clients); soak at {rate:.1f} req/s", flush=True)
        stack.wait_quiet()
        load = MixedLoad(stack.envoy.listener_port, rate, prefix="soak")
        churn = Churn(stack)
        started = time.monotonic()
        samples.append(sample(stack, load, started, 0))
        load.start()
        churn.start()
        minute = 1
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(max(0.0, started + minute * 60 - time.monotonic()))
            since = sum(s.sent for s in samples)
            samples.append(sample(stack, load, started, since))
            print(json.dumps(asdict(samples[-1])), flush=True)
            minute += 1
        churn.halt.set()
        churn.join(30)
        load.stop()
        quiet = stack.wait_quiet()
        final = sample(stack, load, started, sum(s.sent for s in samples))
        samples.append(final)
        streams = stack.envoy.stats("cluster.epp.upstream_rq_")
        resets = streams.get("cluster.epp.upstream_rq_tx_reset", 0), streams.get("cluster.epp.upstream_rq_total", 0)
    finally:
        if churn is not None:
            churn.halt.set()
        if load is not None:
            load.stop(grace=5)
        stack.stop()
    for previous, current in itertools.pairwise(samples):  # failures by when the request was sent
        window = [r for r in load.sent if previous.at < r.sent <= current.at] if load is not None else []
        current.sent, current.failed = len(window), sum(1 for r in window if not r.result.ok)
        current.failures = dict(Counter(r.result.status for r in window if not r.result.ok))
    print()
    print(table(samples))
    warm = [s for s in samples if s.minute >= args.warmup_minutes]
    growth = (warm[-1].rss_mb / warm[0].rss_mb - 1) * 100 if len(warm) > 1 else float("nan")
    sent = sum(s.sent for s in samples)
    failed = sum(s.failed for s in samples)
    assert churn is not None
    print(
        f"\n{sent} requests, {failed} failed; {churn.joins} joins, {churn.leaves} leaves, {churn.metric_faults} "
        f"metrics faults, {churn.rewrites} rewrite changes; {load.skipped if load else 0} sends skipped (the client"
        f" fell over {MAX_LAG_S:g} s behind); churn errors: {churn.errors[:3] or 'none'}; "
        f"in-flight once quiet: {quiet}; ext_proc streams Envoy reset: {resets[0]} of {resets[1]}; "
        f"RSS growth after minute {args.warmup_minutes:g}: {growth:+.1f} %"
    )
    if args.json:
        args.json.write_text(json.dumps({"samples": [asdict(s) for s in samples], "rss_growth_pct": growth}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
