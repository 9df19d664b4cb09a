"""Issue 6 end to end: a saturated simulated fleet sheds only sheddable requests. InferenceObjectives from
the (test) Kubernetes API give `batch` priority -1 and `chat` priority 0. With every server's queue at the
utilization detector's threshold (5 waiting), a `batch` request gets 429 at once, while `chat` requests —
and requests naming no objective — are still routed and complete when the servers catch up."""

from __future__ import annotations

import concurrent.futures
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from epp.devstack.envoy import EnvoyProcess, free_port, render_bootstrap
from epp.devstack.processes import EppProcess
from kubesim.kubelet import Kubelet, SimPod
from kubesim.testing import KubeSimThread, prometheus_samples, wait_until
from tests.e2e import hog
from tests.e2e.http import post

pytestmark = pytest.mark.e2e
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
X_K8S = "inference.networking.x-k8s.io/v1alpha2"
POOL = {
    "apiVersion": "inference.networking.k8s.io/v1",
    "kind": "InferencePool",
    "metadata": {"name": "shed-pool", "namespace": "default"},
    "spec": {"selector": {"matchLabels": {"app": "vllm-shed"}}, "targetPorts": [{"number": 8000}]},
}


def objective(name: str, priority: int) -> dict[str, object]:
    return {
        "apiVersion": X_K8S,
        "kind": "InferenceObjective",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"priority": priority, "poolRef": {"group": "inference.networking.k8s.io", "name": "shed-pool"}},
    }


def waiting(pod: SimPod) -> float:
    return sum(v for _, v in prometheus_samples(f"http://{pod.ip}:8000/metrics", "vllm:num_requests_waiting"))


def complete(port: int, objective_name: str | None) -> tuple[int, float, bytes]:
    headers = {"x-gateway-inference-objective": objective_name} if objective_name else {}
    started = time.monotonic()
    status, _, body = post(
        port, "/v1/completions", {"model": MODEL, "prompt": "hello", "max_tokens": 2}, headers, timeout=30
    )
    return status, time.monotonic() - started, body


def test_saturated_fleet_sheds_only_sheddable_requests() -> None:
    with KubeSimThread() as kube, Kubelet(kube, time_scale=1.0) as kubelet:
        pods = kubelet.start_pods(["shed-a", "shed-b"], {"app": "vllm-shed"}, sim_args=["--max-num-seqs", "1"])
        kube.apply([POOL, objective("batch", -1), objective("chat", 0)])
        kubeconfig = Path(tempfile.mkdtemp(prefix="k8s-shed-")) / "kubeconfig"
        kube.write_kubeconfig(kubeconfig)
        epp = EppProcess(
            ["--pool-name", "shed-pool", "--tracing=false", "--refresh-metrics-interval", "50ms"],
            env={"KUBECONFIG": str(kubeconfig)},
        )
        clients = concurrent.futures.ThreadPoolExecutor(2)
        load: subprocess.Popen[bytes] | None = None
        epp.start()
        try:
            with EnvoyProcess(render_bootstrap("envoy", free_port(), free_port(), epp.grpc_port)) as envoy:
                port = envoy.listener_port
                # not saturated: sheddable requests are served like any other
                wait_until(lambda: complete(port, "batch")[0] == 200, 10, what="objectives known, batch served")

                # each server: one request running (max-num-seqs 1) and five waiting, until the hog goes away
                load = hog.start(MODEL, [f"{p.ip}:8000" for p in pods])
                wait_until(lambda: all(waiting(p) >= 5 for p in pods), 10, what="every server queue at 5")
                time.sleep(0.3)  # a few scrapes

                status, elapsed, body = complete(port, "batch")
                assert status == 429 and elapsed < 1.0, (status, elapsed, body)
                assert b"system saturated, sheddable request dropped" in body
                kept = [clients.submit(complete, port, name) for name in ("chat", None)]
                time.sleep(0.5)
                assert not any(f.done() for f in kept), [f.result() for f in kept if f.done()]

                load.kill()  # the servers abort the hog's requests and serve the waiting ones
                load.wait()
                for future in kept:
                    status, _, body = future.result(timeout=20)
                    assert status == 200, body
                # load gone: sheddable requests flow again once a scrape sees the queues drained
                wait_until(lambda: complete(port, "batch")[0] == 200, 5, what="batch served again")
        finally:
            clients.shutdown(wait=False, cancel_futures=True)
            if load is not None and load.poll() is None:
                load.kill()
            epp.stop()
