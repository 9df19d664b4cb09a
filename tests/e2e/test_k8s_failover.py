"""Leader fail-over between two `epp --ha-enable-leader-election` processes behind one real Envoy.

Envoy's ext_proc cluster holds both EPPs and health-checks the ext_proc service on them (as the
reference's test Envoy does), so it sends streams to the leader only. The follower watches the pool and
scrapes its pods all along (its /metrics shows both endpoints with fresh metrics before it leads): when
the leader is stopped (SIGTERM: it releases the Lease) the follower takes over within the retry period,
and when a leader dies without releasing (SIGKILL) the other takes over once the lease expires. Traffic
flows through Envoy the whole time. The graceful hand-over loses no request: the old leader keeps taking
streams until Envoy, having seen the new leader healthy, stops sending them. After a SIGKILL, requests Envoy still
sends to the dead process fail until the lease expires (Envoy's panic routing spreads them over both
hosts while neither is healthy); their count and the fail-over times are printed."""

from __future__ import annotations

import http.client
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from epp.devstack.envoy import EnvoyProcess, free_port, render_bootstrap, with_epp_replicas
from epp.devstack.processes import EppProcess
from kubesim.kubelet import Kubelet
from kubesim.testing import METRICS_AUTH, KubeSimThread, prometheus_samples, wait_until
from tests.e2e.http import post

pytestmark = pytest.mark.e2e
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
LEASE = "epp-default-pool.gateway-api-inference-extension.sigs.k8s.io"
POOL = {
    "apiVersion": "inference.networking.k8s.io/v1",
    "kind": "InferencePool",
    "metadata": {"name": "pool", "namespace": "default"},
    "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": 8000}]},
}
HA_ARGS = [
    "--pool-name", "pool", "--tracing=false", "--ha-enable-leader-election", "--health-checking",
    "--ha-lease-duration", "3s", "--ha-renew-deadline", "2s", "--ha-retry-period", "200ms",
    "--drain-timeout", "2s", "--refresh-prometheus-metrics-interval", "100ms",
]  # fmt: skip


def envoy_for(epps: list[EppProcess]) -> dict[str, Any]:
    config = render_bootstrap("envoy", free_port(), free_port(), epps[0].grpc_port)
    return with_epp_replicas(config, [e.grpc_port for e in epps])


def routed(epp: EppProcess) -> float:
    url = f"http://127.0.0.1:{epp.metrics_port}/metrics"
    return sum(v for _, v in prometheus_samples(url, "inference_objective_request_total", METRICS_AUTH))


def warm(epp: EppProcess) -> bool:
    """Both pods known and freshly scraped."""
    url = f"http://127.0.0.1:{epp.metrics_port}/metrics"
    try:
        prometheus_samples(url, "inference_pool_ready_pods", METRICS_AUTH)
    except OSError:
        return False  # not listening yet
    except RuntimeError as error:  # 503 until its Kubernetes client, which reviews tokens, is connected
        if "HTTP 503" in str(error):
            return False
        raise
    per_pod = prometheus_samples(url, "inference_pool_per_pod_queue_size", METRICS_AUTH)
    pods = {labels["model_server_pod"] for labels, _ in per_pod}
    ready = sum(v for _, v in prometheus_samples(url, "inference_pool_ready_pods", METRICS_AUTH))
    return pods == {"vllm-a-rank-0", "vllm-b-rank-0"} and ready == 2


class Load(threading.Thread):
    """Requests one after another through Envoy until stopped; records (time, status)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.results: list[tuple[float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            body = {"model": MODEL, "prompt": f"hello {i}", "max_tokens": 1}
            try:
                status, _, _ = post(self.port, "/v1/completions", body, timeout=5)
            except (OSError, http.client.HTTPException, ValueError):
                # closed without a response, or a response cut short (http.client raises ValueError on a
                # chunk-size line cut to nothing): a failed request, and the load goes on
                status = 0
            self.results.append((time.monotonic(), status))
            i += 1

    def failures_between(self, start: float, end: float) -> int:
        return sum(1 for t, s in self.results if start <= t <= end and s != 200)


def health(epp: EppProcess, service: str) -> str:
    """The EPP's health status for a service name ("" while its health port is not up yet)."""
    try:
        return epp.health(service)
    except grpc.RpcError:
        return ""


def leader_of(kube: KubeSimThread) -> str:
    spec = kube.get("coordination.k8s.io/v1", "Lease", LEASE)["spec"]
    return str(spec.get("holderIdentity") or "")


def test_leader_failover_keeps_routing_without_a_cold_start(tmp_path: Path) -> None:
    with KubeSimThread() as kube, Kubelet(kube) as kubelet:
        kube.grant_metrics_reader()
        kubelet.start_pods(["vllm-a", "vllm-b"], {"app": "vllm"}, sim_args=["--model", MODEL])
        kube.apply(POOL)
        kubeconfig = tmp_path / "kubeconfig"
        kube.write_kubeconfig(kubeconfig)
        env = {"KUBECONFIG": str(kubeconfig)}
        first = EppProcess(HA_ARGS, env={**env, "POD_NAME": "epp-5d8f7c9b6d-aaaaa"})
        second = EppProcess(HA_ARGS, env={**env, "POD_NAME": "epp-5d8f7c9b6d-bbbbb"})
        load: Load | None = None
        try:
            first.start(wait_serving=False)
            wait_until(lambda: health(first, "readiness") == "SERVING", 10, what="first EPP leads")
            second.start(wait_serving=False)
            wait_until(lambda: health(second, "liveness") == "SERVING", 10, what="second EPP alive")
            assert leader_of(kube).startswith("epp-5d8f7c9b6d-aaaaa_")
            # The follower: alive, not ready, unknown for other names, and warm.
            assert health(second, "readiness") == "NOT_SERVING"
            assert health(second, "") == "NOT_SERVING"
            assert second.health("inference-extension") == "SERVICE_UNKNOWN"
            wait_until(lambda: warm(second), 5, what="follower table warm (both pods, fresh metrics)")

            with EnvoyProcess(envoy_for([first, second])) as envoy:
                load = Load(envoy.listener_port)
                load.start()
                wait_until(lambda: routed(first) >= 20, 10, what="leader routing")
                assert routed(second) == 0, "the follower gets no streams while the leader is healthy"

                # Graceful hand-over: SIGTERM releases the lease; the follower takes it at its next try.
                stopped = time.monotonic()
                assert first.process is not None
                first.process.send_signal(signal.SIGTERM)
                wait_until(lambda: health(second, "readiness") == "SERVING", 5, interval=0.01, what="takeover")
                graceful = time.monotonic() - stopped
                base = routed(second)
                wait_until(lambda: routed(second) >= base + 20, 10, what="new leader routing")
                recovered = time.monotonic()
                assert leader_of(kube).startswith("epp-5d8f7c9b6d-bbbbb_")
                graceful_failures = load.failures_between(stopped, recovered)
                first.stop()

                # The old leader comes back as a follower; then the leader dies without releasing.
                first = EppProcess(HA_ARGS, grpc_port=first.grpc_port, env={**env, "POD_NAME": "epp-5d8f7c9b6d-ccccc"})
                first.start(wait_serving=False)
                wait_until(lambda: warm(first), 10, what="restarted EPP warm as a follower")
                assert health(first, "readiness") == "NOT_SERVING"
                killed = time.monotonic()
                assert second.process is not None
                second.process.send_signal(signal.SIGKILL)
                wait_until(
                    lambda: health(first, "readiness") == "SERVING", 8, interval=0.01, what="takeover after kill"
                )
                expired = time.monotonic() - killed
                base = routed(first)

                def recovered_after_kill() -> bool:
                    tail = load.results[-20:] if load is not None else []
                    return len(tail) == 20 and tail[0][0] > killed and all(status == 200 for _, status in tail)

                wait_until(recovered_after_kill, 10, what="20 requests in a row routed after the kill")
                assert routed(first) > base
                load.halt.set()
                load.join(10)
                kill_failures = load.failures_between(killed, time.monotonic())
        except BaseException:
            print("--- first EPP log ---\n" + first.log() + "\n--- second EPP log ---\n" + second.log())
            raise
        finally:
            if load is not None:
                load.halt.set()
            first.stop()
            second.stop()
    print(
        f"fail-over: graceful {graceful * 1000:.0f} ms with {graceful_failures} failed requests; after SIGKILL "
        f"{expired * 1000:.0f} ms (lease 3 s) with {kill_failures} failed; {len(load.results)} requests in all"
    )
    assert graceful < 2.0
    assert graceful_failures == 0, "the old leader keeps taking streams until the proxy has moved to the new one"
    assert expired < 6.0
