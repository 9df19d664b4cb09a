"""Canary releases through an InferenceModelRewrite, end to end (the KServe guide's steps, user guide 004,
in the inference gateway's terms): model `food-review` is split between `food-review-v1` (two pods) and
`food-review-v2` (one pod) by weight. Counted at the model servers:

1. canary 90/10: v2's share is within the binomial bounds;
2. promote 0/100: everything reaches v2;
3. roll back 100/0: nothing reaches v2, yet a client pinning v2 with `x-gateway-model-name-rewrite` gets it;
4. back to 90/10 with v2 unhealthy — its pod unready, then its server gone (metrics stale) — v2 gets no
   traffic, v1 serves all of it, and the EPP says so in a metric and a log line; when v2 is Ready again it
   gets its share back.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from epp.devstack.envoy import EnvoyProcess, free_port, render_bootstrap
from epp.devstack.processes import EppProcess
from kubesim.kubelet import Kubelet, SimPod
from kubesim.testing import METRICS_AUTH, KubeSimThread, prometheus_samples, wait_until
from tests.e2e.http import post

pytestmark = pytest.mark.e2e
BASE = "meta-llama/Llama-3.1-8B-Instruct"
POOL = {
    "apiVersion": "inference.networking.k8s.io/v1",
    "kind": "InferencePool",
    "metadata": {"name": "food-review-pool", "namespace": "default"},
    "spec": {"selector": {"matchLabels": {"app": "vllm-food-review"}}, "targetPorts": [{"number": 8000}]},
}


def rewrite(v1: int, v2: int) -> dict[str, object]:
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
        "kind": "InferenceModelRewrite",
        "metadata": {"name": "food-review-canary", "namespace": "default"},
        "spec": {
            "poolRef": {"group": "inference.networking.k8s.io", "name": "food-review-pool"},
            "rules": [
                {
                    "matches": [{"model": {"type": "Exact", "value": "food-review"}}],
                    "targets": [
                        {"modelRewrite": "food-review-v1", "weight": v1},
                        {"modelRewrite": "food-review-v2", "weight": v2},
                    ],
                }
            ],
        },
    }


def served(pod: SimPod) -> float:
    samples = prometheus_samples(f"http://{pod.ip}:8000/metrics", "vllm:request_success_total")
    return sum(value for _, value in samples)


class Traffic:
    def __init__(self, port: int) -> None:
        self.port = port

    def send(self, count: int, headers: dict[str, str] | None = None, strict: bool = True) -> list[int]:
        """Send `count` requests 8 at a time; statuses (all 200 unless not `strict`)."""

        def one(i: int) -> int:
            body = {"model": "food-review", "prompt": f"Is the soup good? #{i}", "max_tokens": 2}
            status, _, text = post(self.port, "/v1/completions", body, headers)
            assert status == 200 or not strict, text
            return status

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(count)))


def counted(pods: list[SimPod], action: Callable[[], object]) -> list[float]:
    """Requests each pod completed while `action` ran."""
    before = [served(p) for p in pods]
    action()
    return [served(p) - b for p, b in zip(pods, before, strict=True)]


def unavailable(epp: EppProcess) -> float | None:
    url = f"http://127.0.0.1:{epp.metrics_port}/metrics"
    for labels, value in prometheus_samples(url, "inference_extension_model_rewrite_target_unavailable", METRICS_AUTH):
        if labels.get("target_model") == "food-review-v2":
            return value
    return None


def test_canary_split_promote_rollback_pin_and_unhealthy_target(tmp_path: Path) -> None:
    with KubeSimThread() as kube, Kubelet(kube) as kubelet:
        kube.grant_metrics_reader()
        labels = {"app": "vllm-food-review"}
        v1 = kubelet.start_pods(
            ["v1-a", "v1-b"], labels, sim_args=["--model", BASE, "--lora-modules", "food-review-v1"]
        )
        [v2] = kubelet.start_pods(["v2-a"], labels, sim_args=["--model", BASE, "--lora-modules", "food-review-v2"])
        kube.apply([POOL, rewrite(90, 10)])
        kubeconfig = tmp_path / "kubeconfig"
        kube.write_kubeconfig(kubeconfig)
        epp = EppProcess(
            ["--pool-name", "food-review-pool", "--tracing=false", "--metrics-staleness-threshold", "500ms"],
            env={"KUBECONFIG": str(kubeconfig)},
        )
        epp.start()
        try:
            wait_until(lambda: epp.log_path.read_text().count(" serves ") >= 3, 5, what="served models probed")
            with EnvoyProcess(render_bootstrap("envoy", free_port(), free_port(), epp.grpc_port)) as envoy:
                traffic = Traffic(envoy.listener_port)
                pods = [*v1, v2]

                # 1. Canary 90/10: v2's share of 400 is binomial(400, 0.1): mean 40, sd 6; ±3.5 sd.
                counts = counted(pods, lambda: traffic.send(400))
                assert sum(counts) == 400
                assert 19 <= counts[2] <= 61, counts

                # 2. Promote: 0/100.
                kube.apply(rewrite(0, 100))
                wait_until(lambda: counted(pods, lambda: traffic.send(4))[2] == 4, 5, what="promotion applied")
                counts = counted(pods, lambda: traffic.send(40))
                assert counts == [0, 0, 40], counts

                # 3. Roll back: 100/0; a pinned client still reaches v2.
                kube.apply(rewrite(100, 0))
                wait_until(lambda: counted(pods, lambda: traffic.send(4))[2] == 0, 5, what="rollback applied")
                counts = counted(pods, lambda: traffic.send(40))
                assert counts[2] == 0 and sum(counts) == 40, counts
                pin = {"x-gateway-model-name-rewrite": "food-review-v2"}
                counts = counted(pods, lambda: traffic.send(6, pin))
                assert counts == [0, 0, 6], counts

                # 4a. 90/10 with v2's only pod unready: v1 takes everything; metric and log say so.
                kube.apply(rewrite(90, 10))
                kube.set_pod_ready("v2-a", False)
                wait_until(lambda: counted(pods, lambda: traffic.send(20))[2] == 0, 5, what="v2 unready")
                counts = counted(pods, lambda: traffic.send(100))
                assert counts[2] == 0 and sum(counts) == 100, counts
                assert unavailable(epp) == 1.0
                assert "target food-review-v2 gets no traffic" in epp.log_path.read_text()

                # Ready again: v2 gets its share back (P(no v2 in 150) = 0.9^150 ≈ 1e-7).
                kube.set_pod_ready("v2-a", True)
                wait_until(lambda: counted(pods, lambda: traffic.send(150))[2] > 0, 10, what="v2 back in rotation")
                assert unavailable(epp) == 0.0

                # 4b. v2's server dies but its pod still says Ready: its metrics go stale, v1 takes over.
                kubelet.stop_pod("v2-a", delete=False)
                survivors = v1

                def v2_marked_unavailable() -> bool:
                    traffic.send(10, strict=False)  # until v2 is stale, some of these reach the dead server
                    return unavailable(epp) == 1.0

                wait_until(v2_marked_unavailable, 5, what="stale v2 skipped")
                counts = counted(survivors, lambda: traffic.send(100))
                assert sum(counts) == 100, counts
                assert unavailable(epp) == 1.0
        finally:
            epp.stop()
