"""The Helm chart end to end, the way test_k8s_istio_guide.py runs the Istio guide: the chart rendered by a
real helm (`helm template`, provider none, the pool named after the guide's so its HTTPRoute applies) and
applied to kubesim with step 1 of the Istio guide (the vLLM simulator Deployment, Gateway, HTTPRoute). The
simulator's three replicas run as simulated vLLM servers on their own loopback addresses; the chart's EPP
Deployment runs with its container args, env and ConfigMap mounted where the Deployment mounts it; the
guide's request goes through real Envoy (TLS to the EPP) to one of the pods.

The EPP talks to kubesim as the chart's service account, so the chart's RBAC is what lets it read the pool
and pods and review tokens; /metrics is behind --metrics-endpoint-auth (the chart keeps the default, true) and
is scraped with the token of the chart's monitoring Secret, as Prometheus would.
"""

from __future__ import annotations

import base64
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from epp.devstack.envoy import EnvoyProcess, free_port, render_bootstrap
from epp.devstack.processes import EppProcess
from kubesim.kubelet import Kubelet, container_command
from kubesim.testing import KubeSimThread, prometheus_samples, wait_until
from tests.deploy.helm import template
from tests.e2e.http import post
from tests.support.istio_guide import ISTIO_INGRESS, NAMESPACE, REQUEST, STEP_1, served
from tests.support.manifests import one

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]
RELEASE = "inference-model-server-pool"  # the pool name the guide's HTTPRoute sends to
#: a service account of the namespace that no role lets read /metrics
INTRUDER = f"""
apiVersion: v1
kind: ServiceAccount
metadata: {{name: curious, namespace: {NAMESPACE}}}
"""


def scraper_authorization(kube: KubeSimThread, monitor: dict[str, Any]) -> str:
    """The Authorization header Prometheus sends for the ServiceMonitor: the token the token controller writes
    into the Secret its endpoint names."""
    credentials = monitor["spec"]["endpoints"][0]["authorization"]["credentials"]
    kube.fill_service_account_token(NAMESPACE, credentials["name"])
    secret = kube.get("v1", "Secret", credentials["name"], NAMESPACE)
    return f"Bearer {base64.b64decode(secret['data'][credentials['key']]).decode()}"


def scrape_status(url: str, authorization: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


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
            "inferenceExtension.monitoring.prometheus.enabled=true",
        ),
    )
    monitor = one(objects, "ServiceMonitor")  # a Prometheus Operator object: validated in tests/deploy, not applied
    with KubeSimThread() as kube, Kubelet(kube) as kubelet:
        kube.apply(ISTIO_INGRESS)
        kube.apply(STEP_1)
        kube.apply([o for o in objects if o is not monitor])
        model_servers = kube.get("apps/v1", "Deployment", "inference-model-server-deployment", NAMESPACE)
        pods = kubelet.run_deployment(model_servers)
        assert len(pods) == 3

        picker = kube.get("apps/v1", "Deployment", f"{RELEASE}-epp", NAMESPACE)
        volumes = picker["spec"]["template"]["spec"]["volumes"]
        config_name = next(v["configMap"]["name"] for v in volumes if "configMap" in v)
        config = kube.get("v1", "ConfigMap", config_name, NAMESPACE)
        command = container_command(picker, {config_name: config}, f"{RELEASE}-epp-6f7d9c8b4-k2x8q")
        assert "--config-file" in command.args and "--pool-name" in command.args
        account = picker["spec"]["template"]["spec"]["serviceAccountName"]
        kubeconfig = kube.write_kubeconfig(
            tmp_path / "kubeconfig", token=kube.service_account_token(NAMESPACE, account)
        )
        scraper = scraper_authorization(kube, monitor)
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
                    {
                        s[0]["model_server_pod"]
                        for s in prometheus_samples(url, "inference_pool_per_pod_queue_size", scraper)
                    }
                    == wanted
                ),
                5,
                what="the EPP holds the three pods",
            )
            intruder = kube.apply(INTRUDER)[0]["metadata"]["name"]
            assert scrape_status(url, f"Bearer {kube.service_account_token(NAMESPACE, intruder)}") == 403
            assert scrape_status(url, "Bearer not-a-token-the-api-server-issued") == 401
            assert scrape_status(url, "") == 401
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
