"""The Istio guide (user guide 003), applied to kubesim as written: its namespace, the vLLM simulator
Deployment, Gateway and HTTPRoute (step 1), then the endpoint picker's Deployment, Service, the
`plugins-config` ConfigMap (default-plugins.yaml), DestinationRule, the v1 InferencePool and RBAC (step 2).
The simulator Deployment's three replicas run as simulated vLLM servers on their own loopback addresses
(port 8000 each, the guide's args); the EPP runs with the Deployment's container args and the ConfigMap
mounted where the Deployment mounts it. The guide's curl request, sent through real Envoy (TLS to the EPP
as the DestinationRule asks), is answered by one of the pods."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from epp.devstack.envoy import EnvoyProcess, free_port, render_bootstrap
from epp.devstack.processes import EppProcess
from kubesim.kubelet import Kubelet, container_command
from kubesim.testing import KubeSimThread, prometheus_samples, wait_until
from tests.e2e.http import post
from tests.support.istio_guide import ISTIO_INGRESS, NAMESPACE, REQUEST, STEP_1, STEP_2, served

pytestmark = pytest.mark.e2e


def test_istio_guide_deployment_routes_through_envoy_to_the_pods(tmp_path: Path) -> None:
    with KubeSimThread() as kube, Kubelet(kube) as kubelet:
        # the guide's Deployment keeps --metrics-endpoint-auth on (the default): a scraper needs a token
        auth = kube.grant_metrics_reader()
        kube.apply(ISTIO_INGRESS)
        kube.apply(STEP_1)
        kube.apply(STEP_2)
        model_servers = kube.get("apps/v1", "Deployment", "inference-model-server-deployment", NAMESPACE)
        pods = kubelet.run_deployment(model_servers)
        assert len(pods) == 3

        picker = kube.get("apps/v1", "Deployment", "inference-endpoint-picker", NAMESPACE)
        config = kube.get("v1", "ConfigMap", "plugins-config", NAMESPACE)
        command = container_command(picker, {"plugins-config": config}, "inference-endpoint-picker-7c9d8f6b5-q2x4z")
        assert "--config-file" in command.args
        kubeconfig = tmp_path / "kubeconfig"
        kube.write_kubeconfig(kubeconfig)
        epp = EppProcess(command.args, env={**command.env, "KUBECONFIG": str(kubeconfig)})
        try:
            epp.start()
            # The guide's probes: gRPC health on 9003 (here: the EPP's health port), service inference-extension.
            assert epp.health("inference-extension") == "SERVING"
            url = f"http://127.0.0.1:{epp.metrics_port}/metrics"
            wanted = {f"{pod.name}-rank-0" for pod in pods}
            wait_until(
                lambda: (
                    {
                        s[0]["model_server_pod"]
                        for s in prometheus_samples(url, "inference_pool_per_pod_queue_size", auth)
                    }
                    == wanted
                ),
                5,
                what="the EPP holds the three pods",
            )
            with EnvoyProcess(render_bootstrap("envoy", free_port(), free_port(), epp.grpc_port)) as envoy:
                before = sum(served(pod.ip) for pod in pods)
                status, _, body = post(envoy.listener_port, "/v1/completions", REQUEST)
                assert status == 200, body
                answer = json.loads(body)
                assert answer["model"] == "reviews-1"
                assert answer["object"] == "text_completion" and answer["choices"][0]["text"]
                assert answer["usage"]["completion_tokens"] > 0
                for i in range(9):
                    status, _, body = post(
                        envoy.listener_port, "/v1/completions", {**REQUEST, "prompt": f"Review {i}?"}
                    )
                    assert status == 200, body
                after = sum(served(pod.ip) for pod in pods)
                assert after - before == 10, "every request reached one of the guide's pods"
        finally:
            epp.stop()
            shutil.rmtree(command.volume_root, ignore_errors=True)
