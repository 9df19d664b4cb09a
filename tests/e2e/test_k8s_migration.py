"""Zero-downtime migration from the v1alpha2 preview API to v1 (user guide 000), end to end.

Both stacks run side by side over the same model-server pods, each with its own EPP and gateway (Envoy):
the preview stack is a v1alpha2 InferencePool (`spec.selector`, `spec.targetPortNumber`) with
InferenceModels (criticality, weighted targetModels), watched by an EPP started with
`--pool-group inference.networking.x-k8s.io`; the GA stack is a v1 InferencePool with the guide's
InferenceObjectives (priority 2) and the InferenceModelRewrite that carries food-review's targetModels.
Traffic is split 50/50 between the stacks (the HTTPRoute's weights), then sent 100 % to v1, then the
v1alpha2 objects are deleted: the preview EPP empties and goes NOT_SERVING while v1 keeps serving.
Both EPPs must resolve `food-review` to `food-review-1` with priority 2 (their request metrics say so)."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.devstack.envoy import EnvoyProcess, free_port, render_bootstrap
from epp.devstack.processes import EppProcess
from kubesim.kubelet import Kubelet
from kubesim.testing import METRICS_AUTH, KubeSimThread, prometheus_samples, wait_until
from tests.e2e.http import post

pytestmark = pytest.mark.e2e
BASE = "meta-llama/Llama-3.1-8B-Instruct"
X_K8S = "inference.networking.x-k8s.io/v1alpha2"

PREVIEW = f"""
apiVersion: {X_K8S}
kind: InferencePool
metadata:
  name: vllm-llama3-8b-instruct-preview
spec:
  selector:
    app: vllm-llama3-8b-instruct
  targetPortNumber: 8000
  extensionRef:
    name: vllm-llama3-8b-instruct-preview-epp
---
apiVersion: {X_K8S}
kind: InferenceModel
metadata:
  name: food-review
spec:
  modelName: food-review
  criticality: Critical
  poolRef:
    name: vllm-llama3-8b-instruct-preview
  targetModels:
  - name: food-review-1
    weight: 100
---
apiVersion: {X_K8S}
kind: InferenceModel
metadata:
  name: base-model
spec:
  modelName: {BASE}
  criticality: Critical
  poolRef:
    name: vllm-llama3-8b-instruct-preview
"""

# The guide's step 1: the v1 pool (as its Helm chart makes it) and its InferenceObjectives, verbatim;
# plus the InferenceModelRewrite that keeps food-review's targetModels (what `epp migrate` writes).
GA = f"""
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata:
  name: vllm-llama3-8b-instruct-ga
spec:
  selector:
    matchLabels:
      app: vllm-llama3-8b-instruct
  targetPorts:
  - number: 8000
  endpointPickerRef:
    name: vllm-llama3-8b-instruct-ga-epp
    port:
      number: 9002
---
apiVersion: {X_K8S}
kind: InferenceObjective
metadata:
  name: food-review
spec:
  priority: 2
  poolRef:
    group: inference.networking.k8s.io
    name: vllm-llama3-8b-instruct-ga
---
apiVersion: {X_K8S}
kind: InferenceObjective
metadata:
  name: base-model
spec:
  priority: 2
  poolRef:
    group: inference.networking.k8s.io
    name: vllm-llama3-8b-instruct-ga
---
apiVersion: {X_K8S}
kind: InferenceModelRewrite
metadata:
  name: food-review
spec:
  poolRef:
    group: inference.networking.k8s.io
    name: vllm-llama3-8b-instruct-ga
  rules:
  - matches:
    - model: {{type: Exact, value: food-review}}
    targets:
    - {{modelRewrite: food-review-1, weight: 100}}
"""


def requests_seen(epp: EppProcess) -> dict[tuple[str, str, str], float]:
    url = f"http://127.0.0.1:{epp.metrics_port}/metrics"
    return {
        (labels["model_name"], labels["target_model_name"], labels["priority"]): value
        for labels, value in prometheus_samples(url, "inference_objective_request_total", METRICS_AUTH)
    }


def send(envoy: EnvoyProcess, count: int, objective: str) -> None:
    headers = {"x-gateway-inference-objective": objective}
    for i in range(count):
        body = {"model": "food-review", "prompt": f"How was the ramen? {i}", "max_tokens": 2}
        status, _, text = post(envoy.listener_port, "/v1/completions", body, headers)
        assert status == 200, text


def test_v1alpha2_and_v1_pools_side_by_side_then_v1_only(tmp_path: Path) -> None:
    with KubeSimThread() as kube, Kubelet(kube) as kubelet:
        kube.grant_metrics_reader()
        pods = kubelet.start_pods(
            ["vllm-0", "vllm-1"],
            {"app": "vllm-llama3-8b-instruct"},
            sim_args=["--model", BASE, "--lora-modules", "food-review-1"],
        )
        kube.apply(PREVIEW)
        kube.apply(GA)
        kubeconfig = tmp_path / "kubeconfig"
        kube.write_kubeconfig(kubeconfig)
        env = {"KUBECONFIG": str(kubeconfig)}
        preview = EppProcess(
            ["--pool-name", "vllm-llama3-8b-instruct-preview", "--pool-group", "inference.networking.x-k8s.io",
             "--tracing=false"],
            env=env,
        )  # fmt: skip
        ga = EppProcess(["--pool-name", "vllm-llama3-8b-instruct-ga", "--tracing=false"], env=env)
        try:
            preview.start(wait_serving=False)
            ga.start(wait_serving=False)
            preview.wait_serving(20)
            ga.wait_serving(20)
            for epp in (preview, ga):
                wait_until(lambda e=epp: e.log_path.read_text().count(" serves ") >= 2, 5, what="models probed")
            with (
                EnvoyProcess(render_bootstrap("envoy", free_port(), free_port(), preview.grpc_port)) as gateway_a,
                EnvoyProcess(render_bootstrap("envoy", free_port(), free_port(), ga.grpc_port)) as gateway_b,
            ):
                # HTTPRoute 50/50 over the two stacks.
                for _ in range(10):
                    send(gateway_a, 1, "food-review")
                    send(gateway_b, 1, "food-review")
                resolved = ("food-review", "food-review-1", "2")
                assert requests_seen(preview) == {resolved: 10.0}
                assert requests_seen(ga) == {resolved: 10.0}

                # HTTPRoute 100 % to v1.
                send(gateway_b, 20, "food-review")
                assert requests_seen(ga) == {resolved: 30.0}

                # Clean up the preview stack: its EPP empties and goes unready; v1 is unaffected.
                kube.delete(X_K8S, "InferenceModel", "food-review")
                kube.delete(X_K8S, "InferenceModel", "base-model")
                kube.delete(X_K8S, "InferencePool", "vllm-llama3-8b-instruct-preview")
                wait_until(lambda: preview.health() == "NOT_SERVING", 5, what="preview EPP unready")
                status, _, _ = post(gateway_a.listener_port, "/v1/completions", {"model": "food-review", "prompt": "x"})
                assert status != 200, "the preview stack has no endpoints left"
                send(gateway_b, 10, "food-review")
                assert requests_seen(ga) == {resolved: 40.0}
                assert ga.health() == "SERVING"
                served = sum(
                    v
                    for pod in pods
                    for _, v in prometheus_samples(f"http://{pod.ip}:8000/metrics", "vllm:request_success_total")
                )
                assert served == 50, "every request of both stacks reached the shared pods"
        finally:
            preview.stop()
            ga.stop()
