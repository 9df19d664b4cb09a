"""The Helm chart end to end, the way test_k8s_istio_guide.py runs the Istio guide: the chart rendered by a
real helm (`helm template`, provider none, the pool named after the guide's so its HTTPRoute applies) and
applied to kubesim with step 1 of the Istio guide (the vLLM simulator Deployment, Gateway, HTTPRoute). The
simulator's three replicas run as simulated vLLM servers on their own loopback addresses; the chart's EPP
Deployment runs with its container args, env and ConfigMap mounted where the Deployment mounts it; the
guide's request goes through real Envoy (TLS to the EPP) to one of the pods.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from epp.devstack.envoy import EnvoyProcess, free_port, render_bootstrap
from epp.devstack.processes import EppProcess
from kubesim.kubelet import Kubelet, container_command
from kubesim.testing import KubeSimThread, prometheus_samples, wait_until
from tests.deploy.helm import template
from tests.e2e.http import post
from tests.support.istio_guide import ISTIO_INGRESS, NAMESPACE, REQUEST, STEP_1, served

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]
RELEASE = "inference-model-server-pool"  # the pool name the guide's HTTPRoute sends to


@pytest.mark.parametrize("api_version", ["inference.networking.k8s.io/v1", "inference.networking.x-k8s.io/v1alpha2"])
def test_helm_chart_routes_through_envoy_to_the_pods(tmp_path: Path, api_version: str) -> None:
    ext_proc_port = free_port()
    objects = template(
        RELEASE,
        NAMESPACE,
        sets=(
            "inferencePool.modelServers.matchLabels.app=inference-model-server",
            "provider.name=none",
            f"inferencePool.apiVersion={api_version}",
            f"inferenceExtension.extProcPort={ext_proc_port}",
        ),
    )
    with KubeSimThread() as kube, Kubelet(kube) as kubelet:
        kube.apply(ISTIO_INGRESS)
        kube.apply(STEP_1)
        kube.apply(objects)
        model_servers = kube.get("apps/v1", "Deployment", "inference-model-server-deployment", NAMESPACE)
        pods = kubelet.run_deployment(model_servers)
        assert len(pods) == 3

        picker = kube.get("apps/v1", "Deployment", f"{RELEASE}-epp", NAMESPACE)
        volumes = picker["spec"]["template"]["spec"]["volumes"]
        config_name = next(v["configMap"]["name"] for v in volumes if "configMap" in v)
        config = kube.get("v1", "ConfigMap", config_name, NAMESPACE)
        command = container_command(picker, {config_name: config}, f"{RELEASE}-epp-6f7d9c8b4-k2x8q")
        assert "--config-file" in command.args and "--pool-name" in command.args
        kubeconfig = tmp_path / "kubeconfig"
        kube.write_kubeconfig(kubeconfig)
        # the chart's --grpc-port is the ext_proc port given above; health and metrics go to free ports
        epp = EppProcess(command.args, grpc_port=ext_proc_port, env={**command.env, "KUBECONFIG": str(kubeconfig)})
        try:
            epp.start()
            # the chart's probes: gRPC health on the health port, the service its readiness probe names
            probe = picker["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["service"]
            assert epp.health(probe) == "SERVING"
            url = f"http://127.0.0.1:{epp.metrics_port}/metrics"
            wanted = {f"{pod.name}-rank-0" for pod in pods}
            wait_until(
                lambda: (
                    {s[0]["model_server_pod"] for s in prometheus_samples(url, "inference_pool_per_pod_queue_size")}
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
                for i in range(9):
                    status, _, body = post(
                        envoy.listener_port, "/v1/completions", {**REQUEST, "prompt": f"Review {i}?"}
                    )
                    assert status == 200, body
                after = sum(served(pod.ip) for pod in pods)
                assert after - before == 10, "every request reached one of the pool's pods"
        finally:
            epp.stop()
            shutil.rmtree(command.volume_root, ignore_errors=True)
