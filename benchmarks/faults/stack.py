"""The stack the fault benchmark and the soak run against, built from the e2e harness's parts.

- kubesim (the test API server) with an InferencePool, and its test kubelet running one simulated vLLM per pod
  on its own loopback address (so one pod can be killed or frozen alone);
- in front of each pod's /metrics, a fault proxy on the pod's address (the EPPs scrape it through
  --model-server-metrics-port): it passes pages through, delays them, or answers garbage;
- two independent `epp` replicas discovering the pool from kubesim, behind one real Envoy whose ext_proc
  cluster health-checks both (as the leader fail-over e2e test does); Envoy writes one access-log line per
  request with the load generator's request id and the endpoint the EPP picked, so every request is bound
  to the server it went to.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from epp.devstack.envoy import EnvoyProcess, free_port, render_bootstrap, set_runtime, with_epp_replicas
from epp.devstack.processes import EppProcess
from kubesim.kubelet import Kubelet, SimPod
from kubesim.testing import KubeSimThread, prometheus_samples, wait_until

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
LABELS = {"app": "vllm"}
SERVING_PORT = 8000
METRICS_PROXY_PORT = 9400
POOL = {
    "apiVersion": "inference.networking.k8s.io/v1",
    "kind": "InferencePool",
    "metadata": {"name": "pool", "namespace": "default"},
    "spec": {"selector": {"matchLabels": LABELS}, "targetPorts": [{"number": SERVING_PORT}]},
}
ACCESS_LOG_FORMAT = "%REQ(X-LOAD-ID)% %RESPONSE_CODE% %REQ(X-GATEWAY-DESTINATION-ENDPOINT)% %RESPONSE_FLAGS%\n"
GARBAGE_PAGES = [
    b"vllm:num_requests_waiting{garbled 7\nvllm:num_requests_running nan-ish\n",
    b"\x00\xff" * 512,
    b'vllm:kv_cache_usage_perc{model_name="m"} \nvllm:num_requests_waiting 1e999999\n',
    b'# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{a="\\"} 3\n' * 50,
]


class MetricsProxies:
    """One /metrics fault proxy per pod address, all on one event loop in a background thread."""

    def __init__(self) -> None:
        self.modes: dict[str, str] = {}  # pod ip -> pass | slow | garbage
        self.delay_s = 1.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="metrics-proxies", daemon=True)
        self._runners: dict[str, web.AppRunner] = {}
        self._session: ClientSession | None = None
        self._thread.start()

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def add(self, ip: str) -> None:
        self.modes[ip] = "pass"
        self._call(self._add(ip))

    async def _add(self, ip: str) -> None:
        if self._session is None:
            self._session = ClientSession(timeout=ClientTimeout(total=5))
        app = web.Application()
        app.router.add_get("/metrics", lambda request: self._page(ip))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, ip, METRICS_PROXY_PORT).start()
        self._runners[ip] = runner

    async def _page(self, ip: str) -> web.Response:
        mode = self.modes.get(ip, "pass")
        if mode == "garbage":
            return web.Response(body=random.choice(GARBAGE_PAGES), content_type="text/plain")
        if mode == "slow":
            await asyncio.sleep(self.delay_s)
        assert self._session is not None
        try:
            async with self._session.get(f"http://{ip}:{SERVING_PORT}/metrics") as upstream:
                return web.Response(body=await upstream.read(), status=upstream.status, content_type="text/plain")
        except (OSError, TimeoutError):
            return web.Response(status=502)

    def remove(self, ip: str) -> None:
        runner = self._runners.pop(ip, None)
        self.modes.pop(ip, None)
        if runner is not None:
            self._call(runner.cleanup())

    def stop(self) -> None:
        for ip in list(self._runners):
            self.remove(ip)
        if self._session is not None:
            self._call(self._session.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def envoy_config(epps: list[EppProcess], access_log: Path) -> dict[str, Any]:
    """deploy/envoy/envoy.yaml with both EPPs (health-checked) in the ext_proc cluster and an access log."""
    config = render_bootstrap("envoy", free_port(), free_port(), epps[0].grpc_port)
    with_epp_replicas(config, [e.grpc_port for e in epps], check_interval="0.2s")
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"] = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(access_log),
                "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
            },
        }
    ]
    return config


@dataclass
class Binding:
    status: int
    endpoint: str  # ip:port the EPP picked ("-" when none)
    flags: str


def read_access_log(path: Path) -> dict[str, Binding]:
    """request id -> what Envoy did with it (the last line wins)."""
    out: dict[str, Binding] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split(" ")
        if len(parts) >= 4 and parts[0] != "-":
            out[parts[0]] = Binding(int(parts[1]) if parts[1].isdigit() else 0, parts[2], parts[3])
    return out


@dataclass
class ProcessSample:
    rss_mb: float
    fds: int
    threads: int


def sample_process(pid: int) -> ProcessSample:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = float(fields["VmRSS"].split()[0])
    return ProcessSample(rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"]))


def epp_metrics(epp: EppProcess, names: tuple[str, ...]) -> dict[str, float]:
    url = f"http://127.0.0.1:{epp.metrics_port}/metrics"
    return {name: sum(value for _, value in prometheus_samples(url, name)) for name in names}


INFLIGHT_FAMILIES = (
    "inference_extension_endpoint_inflight_requests",
    "inference_extension_endpoint_inflight_tokens",
    "inference_extension_extproc_streams_in_flight",
    "inference_objective_running_requests",
)


@dataclass
class Stack:
    pods: int = 4
    replicas: int = 2
    epp_args: list[str] = field(default_factory=list)
    #: the command before epp's flags (None: `python -m epp.cli`); the soak's --tracemalloc runs traced_epp.py
    epp_launcher: list[str] | None = None
    sim_args: list[str] = field(default_factory=list)
    #: entries that replace or add to the bootstrap's static runtime layer (the soak's --envoy-runtime)
    envoy_runtime: dict[str, Any] = field(default_factory=dict)
    workdir: Path = Path("/tmp")
    kube: KubeSimThread | None = None
    kubelet: Kubelet | None = None
    proxies: MetricsProxies | None = None
    epps: list[EppProcess] = field(default_factory=list)
    envoy: EnvoyProcess | None = None
    access_log: Path = Path("/dev/null")
    _pod_serial: int = 0

    # --- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        self.kube = KubeSimThread()
        self.kube.start()
        self.kubelet = Kubelet(self.kube)
        self.proxies = MetricsProxies()
        for _ in range(self.pods):
            self.add_pod()
        self.kube.apply(POOL)
        kubeconfig = self.workdir / "kubeconfig"
        self.kube.write_kubeconfig(kubeconfig)
        self._epp_env = {"KUBECONFIG": str(kubeconfig)}
        self.epps = [self._start_epp() for _ in range(self.replicas)]
        self.access_log = self.workdir / "access.log"
        self.envoy = EnvoyProcess(set_runtime(envoy_config(self.epps, self.access_log), self.envoy_runtime))
        self.envoy.start()
        for epp in self.epps:
            wait_until(lambda epp=epp: self.ready_pods(epp) == self.pods, 30, what="EPP sees every pod")

    def _start_epp(self, grpc_port: int | None = None) -> EppProcess:
        args = [
            "--pool-name", "pool", "--tracing=false", "--health-checking",
            "--model-server-metrics-port", str(METRICS_PROXY_PORT), "--refresh-prometheus-metrics-interval", "200ms",
            "--drain-timeout", "10s", "--metrics-endpoint-auth=false", *self.epp_args,
        ]  # fmt: skip
        epp = EppProcess(args, grpc_port=grpc_port, env=self._epp_env, launcher=self.epp_launcher)
        epp.start(timeout=90.0)  # the machine is shared: a busy minute must not fail the run
        return epp

    def restart_epp(self, index: int) -> None:
        old = self.epps[index]
        old.stop()
        self.epps[index] = self._start_epp(grpc_port=old.grpc_port)

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
        for epp in self.epps:
            epp.stop()
        if self.kubelet is not None:
            self.kubelet.stop()
        if self.proxies is not None:
            self.proxies.stop()
        if self.kube is not None:
            self.kube.stop()

    # --- pods ---------------------------------------------------------------------------------------------

    def add_pod(self) -> SimPod:
        assert self.kubelet is not None and self.proxies is not None
        self._pod_serial += 1
        name = f"vllm-{self._pod_serial}"
        # the proxy's port must be free on the pod's address too: allocate, then start the pod there
        pod = self.kubelet.start_pods([name], LABELS, (SERVING_PORT,), ["--model", MODEL, *self.sim_args])[0]
        self.proxies.add(pod.ip)
        return pod

    def pod_list(self) -> list[SimPod]:
        assert self.kubelet is not None
        return list(self.kubelet.pods.values())

    def delete_pod(self, pod: SimPod, stop_process: bool = True) -> None:
        """Delete the Pod object; stop its server too unless told to leave it serving."""
        assert self.kubelet is not None and self.kube is not None and self.proxies is not None
        if stop_process:
            self.kubelet.stop_pod(pod.name, pod.namespace)
            self.proxies.remove(pod.ip)
        else:
            self.kube.delete("v1", "Pod", pod.name, pod.namespace)

    def reap(self, pod: SimPod) -> None:
        """Stop a pod whose object is already gone (or whose server was killed) and forget it."""
        assert self.kubelet is not None and self.proxies is not None
        self.kubelet.pods.pop((pod.namespace, pod.name), None)
        self.proxies.remove(pod.ip)
        if pod.process.poll() is None:
            os.kill(pod.process.pid, signal.SIGCONT)
            pod.process.kill()
        pod.process.wait(10)
        if self.kube is not None:
            with contextlib.suppress(Exception):  # already deleted
                self.kube.delete("v1", "Pod", pod.name, pod.namespace)

    # --- observation --------------------------------------------------------------------------------------

    def ready_pods(self, epp: EppProcess) -> float:
        try:
            url = f"http://127.0.0.1:{epp.metrics_port}/metrics"
            return sum(value for _, value in prometheus_samples(url, "inference_pool_ready_pods"))
        except OSError:
            return -1.0

    def inflight(self) -> dict[str, float]:
        """Every in-flight counter of both EPPs, summed."""
        totals = dict.fromkeys(INFLIGHT_FAMILIES, 0.0)
        for epp in self.epps:
            for name, value in epp_metrics(epp, INFLIGHT_FAMILIES).items():
                totals[name] += value
        return totals

    def epp_samples(self) -> list[ProcessSample]:
        return [sample_process(epp.process.pid) for epp in self.epps if epp.process is not None]

    def background_failures(self) -> float:
        return sum(epp_metrics(epp, ("epp_background_task_failures_total",))["epp_background_task_failures_total"]
                   for epp in self.epps)  # fmt: skip

    def wait_quiet(self, timeout: float = 30.0) -> dict[str, float]:
        """Waits until every in-flight counter of both EPPs reads 0 (or the timeout); returns the last reading."""
        deadline = time.monotonic() + timeout
        reading = self.inflight()
        while any(reading.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
            reading = self.inflight()
        return reading


def first_time(events: list[tuple[float, str]], predicate: Callable[[str], bool], after: float) -> float | None:
    return next((t for t, key in events if t >= after and predicate(key)), None)
