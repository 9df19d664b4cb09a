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

pytestmark = pytest.mark.e2e
NAMESPACE = "inference-model-server"

# `kubectl create namespace istio-ingress`
ISTIO_INGRESS = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-ingress"}}

# Step 1 of the guide, verbatim.
STEP_1 = """
apiVersion: v1
kind: Namespace
metadata:
  name: inference-model-server
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: inference-model-server-deployment
  namespace: inference-model-server
  labels:
    app: inference-model-server
spec:
  replicas: 3
  selector:
    matchLabels:
      app: inference-model-server
  template:
    metadata:
      labels:
        app: inference-model-server
    spec:
      containers:
      - name: vllm-sim
        image: ghcr.io/llm-d/llm-d-inference-sim:v0.7.1
        imagePullPolicy: Always
        args:
        - --model
        - meta-llama/Llama-3.1-8B-Instruct
        - --port
        - "8000"
        - --max-loras
        - "2"
        - --lora-modules
        - '{"name": "reviews-1"}'
        ports:
        - containerPort: 8000
          name: http
          protocol: TCP
        env:
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        - name: POD_IP
          valueFrom:
            fieldRef:
              fieldPath: status.podIP
        resources:
          requests:
            cpu: 20m
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gateway
  namespace: istio-ingress
spec:
  gatewayClassName: istio
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes:
      namespaces:
        from: All
      kinds:
      - group: gateway.networking.k8s.io
        kind: HTTPRoute
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: httproute-for-inferencepool
  namespace: inference-model-server
spec:
  parentRefs:
  - group: gateway.networking.k8s.io
    kind: Gateway
    name: gateway
    namespace: istio-ingress
    sectionName: http
  rules:
  - backendRefs:
    - group: inference.networking.k8s.io
      kind: InferencePool
      name: inference-model-server-pool
    matches:
    - path:
        type: PathPrefix
        value: /v1/completions
"""

# Step 2 of the guide, verbatim.
STEP_2 = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: inference-endpoint-picker
  namespace: inference-model-server
  labels:
    app: inference-epp
spec:
  replicas: 1
  selector:
    matchLabels:
      app: inference-epp
  template:
    metadata:
      labels:
        app: inference-epp
    spec:
      containers:
      - name: epp
        image: us-central1-docker.pkg.dev/k8s-staging-images/gateway-api-inference-extension/epp:v20251119-2aaf2a6
        imagePullPolicy: Always
        args:
        - --pool-name
        - "inference-model-server-pool"
        - --pool-namespace
        - "inference-model-server"
        - --v
        - "4"
        - --zap-encoder
        - "json"
        - "--config-file"
        - "/config/default-plugins.yaml"
        ports:
        - containerPort: 9002
        - containerPort: 9003
        - name: metrics
          containerPort: 9090
        livenessProbe:
          grpc:
            port: 9003
            service: inference-extension
          initialDelaySeconds: 5
          periodSeconds: 10
        readinessProbe:
          grpc:
            port: 9003
            service: inference-extension
          initialDelaySeconds: 5
          periodSeconds: 10
        volumeMounts:
        - name: plugins-config-volume
          mountPath: "/config"
      volumes:
      - name: plugins-config-volume
        configMap:
          name: plugins-config
---
apiVersion: v1
kind: Service
metadata:
  name: endpoint-picker-svc
  namespace: inference-model-server
spec:
  selector:
    app: inference-epp
  ports:
    - protocol: TCP
      port: 9002
      targetPort: 9002
      appProtocol: http2
  type: ClusterIP
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: plugins-config
  namespace: inference-model-server
data:
  default-plugins.yaml: |
    apiVersion: inference.networking.x-k8s.io/v1alpha1
    kind: EndpointPickerConfig
    plugins:
    - type: queue-scorer
    - type: kv-cache-utilization-scorer
    - type: prefix-cache-scorer
    schedulingProfiles:
    - name: default
      plugins:
      - pluginRef: queue-scorer
        weight: 2
      - pluginRef: kv-cache-utilization-scorer
        weight: 2
      - pluginRef: prefix-cache-scorer
        weight: 3
---
# 需要 DestinationRule 来启用网关和端点选择器之间的 TLS。
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: endpoint-picker-tls
  namespace: inference-model-server
spec:
  host: endpoint-picker-svc
  trafficPolicy:
      tls:
        mode: SIMPLE
        insecureSkipVerify: true
---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata:
  name: inference-model-server-pool
  namespace: inference-model-server
spec:
  selector:
    matchLabels:
      app: inference-model-server
  targetPorts:
    - number: 8000
  endpointPickerRef:
    name: endpoint-picker-svc
    port:
      number: 9002
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: inference-model-reader
  namespace: inference-model-server
rules:
- apiGroups: ["inference.networking.k8s.io"]
  resources: ["inferencepools"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: epp-to-inference-model-reader
  namespace: inference-model-server
subjects:
- kind: ServiceAccount
  name: default
  namespace: inference-model-server
roleRef:
  kind: Role
  name: inference-model-reader
  apiGroup: rbac.authorization.k8s.io
"""

# Step 4 of the guide: the request.
REQUEST = {
    "model": "reviews-1",
    "prompt": "What do reviewers think about The Comedy of Errors?",
    "max_tokens": 100,
    "temperature": 0,
}


def served(pod_ip: str) -> float:
    samples = prometheus_samples(f"http://{pod_ip}:8000/metrics", "vllm:request_success_total")
    return sum(value for _, value in samples)


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
