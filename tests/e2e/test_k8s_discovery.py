"""Kubernetes discovery end to end: an `epp` process with --pool-name against kubesim, its endpoint set read
from its own /debug/endpoints (with a metrics reader's token, --metrics-endpoint-auth being on) after each change:
pods coming and going, readiness flips, a terminating pod, pool edits (ports, selector), the active-ports
annotation, watch streams cut (with changes while disconnected, and a compaction that forces 410 Gone),
the pool deleted and re-created. No endpoint may be lost and none kept after it left."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from epp.devstack.processes import EppProcess
from kubesim.kubelet import Kubelet
from kubesim.testing import METRICS_AUTH, KubeSimThread, pod_manifest, pod_status, prometheus_samples, wait_until

pytestmark = pytest.mark.e2e
POOL_V1 = "inference.networking.k8s.io/v1"


def pool(selector: dict[str, str], ports: list[int]) -> dict[str, object]:
    return {
        "apiVersion": POOL_V1,
        "kind": "InferencePool",
        "metadata": {"name": "pool", "namespace": "default"},
        "spec": {"selector": {"matchLabels": selector}, "targetPorts": [{"number": p} for p in ports]},
    }


def endpoints(epp: EppProcess) -> set[str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{epp.metrics_port}/debug/endpoints", headers={"Authorization": METRICS_AUTH}
    )
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=5) as response:
        return {row["name"] for row in json.load(response)["endpoints"]}


def expect(epp: EppProcess, wanted: set[str], what: str, timeout: float = 5.0) -> float:
    """Wait until the EPP holds exactly `wanted`; returns how long that took. Fails if a wanted endpoint
    is missing or an unwanted one is still there at the deadline."""
    started = time.monotonic()
    wait_until(lambda: endpoints(epp) == wanted, timeout, what=f"{what}: endpoints {sorted(wanted)}")
    return time.monotonic() - started


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[KubeSimThread, Kubelet, Path]]:
    with KubeSimThread(bookmark_interval=0.5) as kube, Kubelet(kube) as kubelet:
        kube.grant_metrics_reader()
        path = tmp_path / "kubeconfig"
        kube.write_kubeconfig(path)
        yield kube, kubelet, path


def test_pods_readiness_pool_edits_and_watch_drops(cluster: tuple[KubeSimThread, Kubelet, Path]) -> None:
    kube, kubelet, kubeconfig = cluster
    kubelet.start_pods(["a", "b"], {"app": "x"}, (8000, 8001))
    kube.apply(pool({"app": "x"}, [8000]))
    epp = EppProcess(
        ["--pool-name", "pool", "--pool-namespace", "default", "--tracing=false", "--v", "3"],
        env={"KUBECONFIG": str(kubeconfig)},
    )
    epp.start()
    try:
        expect(epp, {"a-rank-0", "b-rank-0"}, "initial list")

        # A pod that turns Ready joins; the time until the EPP holds it is the discovery latency.
        kubelet.start_pods(["c"], {"app": "x"}, (8000, 8001), ready=False)
        time.sleep(0.3)
        assert endpoints(epp) == {"a-rank-0", "b-rank-0"}, "a pod that is not Ready must not be an endpoint"
        flipped = time.monotonic()
        kube.set_pod_ready("c", True)
        expect(epp, {"a-rank-0", "b-rank-0", "c-rank-0"}, "pod c Ready")
        ready_to_routable = time.monotonic() - flipped

        kube.set_pod_ready("a", False)
        expect(epp, {"b-rank-0", "c-rank-0"}, "pod a unready")
        kube.set_pod_ready("a", True)
        expect(epp, {"a-rank-0", "b-rank-0", "c-rank-0"}, "pod a Ready again")

        # Terminating (deletionTimestamp set, grace period running): out at once, not when it is gone.
        kubelet.stop_pod("b", grace=30)
        assert kube.get("v1", "Pod", "b")["metadata"].get("deletionTimestamp")
        expect(epp, {"a-rank-0", "c-rank-0"}, "pod b terminating")

        # Pods outside the selector never appear; a pod whose labels change to match does.
        kube.apply(pod_manifest("other", "127.0.0.99", {"app": "elsewhere"}))
        kube.patch("v1", "Pod", "c", {"metadata": {"labels": {"app": "moved"}}})
        expect(epp, {"a-rank-0"}, "pod c relabelled out of the pool")
        kube.patch("v1", "Pod", "c", {"metadata": {"labels": {"app": "x"}}})
        expect(epp, {"a-rank-0", "c-rank-0"}, "pod c relabelled back")

        # Pool edit: a second target port makes a second rank per pod; active-ports narrows one pod.
        kube.patch(POOL_V1, "InferencePool", "pool", {"spec": {"targetPorts": [{"number": 8000}, {"number": 8001}]}})
        expect(epp, {"a-rank-0", "a-rank-1", "c-rank-0", "c-rank-1"}, "two target ports")

        # Ports reordered: each rank moves onto the other's address. The pod's endpoints must still leave
        # cleanly afterwards (a corrupted address index once made this remove fail and stopped discovery).
        for order in ([8001, 8000], [8000, 8001]):
            kube.patch(POOL_V1, "InferencePool", "pool", {"spec": {"targetPorts": [{"number": p} for p in order]}})
            time.sleep(0.5)  # the pool and pod watches are separate streams: let the reorder land first
            kube.set_pod_ready("c", False)
            expect(epp, {"a-rank-0", "a-rank-1"}, f"pod c unready after targetPorts {order}")
            kube.set_pod_ready("c", True)
            expect(epp, {"a-rank-0", "a-rank-1", "c-rank-0", "c-rank-1"}, f"pod c Ready after targetPorts {order}")
        kube.patch(
            "v1", "Pod", "c", {"metadata": {"annotations": {"inference.networking.k8s.io/active-ports": "8001"}}}
        )
        expect(epp, {"a-rank-0", "a-rank-1", "c-rank-1"}, "active-ports 8001 on pod c")

        # Watches cut mid-stream, changes while the EPP is disconnected: nothing lost, nothing stale kept.
        def cut_and_change() -> None:
            kube.sim.store.drop_watches(abrupt=True)

        kube.call(cut_and_change)
        kubelet.start_pods(["d"], {"app": "x"}, (8000, 8001))
        kube.set_pod_ready("a", False)
        expect(epp, {"c-rank-1", "d-rank-0", "d-rank-1"}, "changes across an abrupt watch drop")

        # Compaction while disconnected: the resume is refused with 410 Gone and the EPP lists again.
        def cut_change_compact() -> None:
            store = kube.sim.store
            store.drop_watches(abrupt=True)
            pods = store.type_of("v1", "Pod")
            store.delete(pods, "default", "d", 0)
            pod_a = store.get(pods, "default", "a")
            store.update(
                pods, "default", "a", {**pod_a, "status": pod_status(pod_a["status"]["podIP"], True)}, "status"
            )
            store.compact()

        kube.call(cut_change_compact)
        expect(epp, {"a-rank-0", "a-rank-1", "c-rank-1"}, "changes across a compaction (410 Gone, relist)")
        assert "410 Gone" in epp.log_path.read_text(), "the EPP should have resumed with a relist after 410"

        # Selector edit: a full resync to the new set.
        kubelet.start_pods(["y1"], {"app": "y"}, (8000, 8001))
        kube.patch(POOL_V1, "InferencePool", "pool", {"spec": {"selector": {"matchLabels": {"app": "y"}}}})
        expect(epp, {"y1-rank-0", "y1-rank-1"}, "selector app=y")

        # Pool deleted: endpoints cleared and not ready; re-created: back.
        kube.delete(POOL_V1, "InferencePool", "pool")
        expect(epp, set(), "pool deleted")
        assert epp.health() == "NOT_SERVING"
        kube.apply(pool({"app": "x"}, [8000]))
        expect(epp, {"a-rank-0"}, "pool re-created (pod c's active-ports names only 8001)")
        wait_until(lambda: epp.health() == "SERVING", 5, what="SERVING after the pool is back")
    finally:
        epp.stop()
    print(f"pod Ready → endpoint in the EPP: {ready_to_routable * 1000:.0f} ms")
    assert ready_to_routable < 2.0


def test_selector_mode_without_the_pool_crd(tmp_path: Path) -> None:
    with KubeSimThread(inference_crds=False) as kube, Kubelet(kube) as kubelet:
        kube.grant_metrics_reader()
        kubelet.start_pods(["s1", "s2"], {"app": "vllm", "tier": "gpu"}, (8000, 8001))
        kubelet.start_pods(["s3"], {"app": "vllm", "tier": "cpu"})
        kubeconfig = tmp_path / "kubeconfig"
        kube.write_kubeconfig(kubeconfig)
        epp = EppProcess(
            ["--endpoint-selector", "app=vllm,tier=gpu", "--endpoint-target-ports", "8000,8001", "--tracing=false"],
            env={"KUBECONFIG": str(kubeconfig), "POD_NAME": "epp-6b8f9d7c5-k2m4n", "NAMESPACE": "default"},
        )
        epp.start()
        try:
            expect(epp, {"s1-rank-0", "s1-rank-1", "s2-rank-0", "s2-rank-1"}, "selector mode")
            # the pool gauges are named after the EPP's Deployment, as the pool is
            url = f"http://127.0.0.1:{epp.metrics_port}/metrics"
            assert {
                labels["name"] for labels, _ in prometheus_samples(url, "inference_pool_ready_pods", METRICS_AUTH)
            } == {"epp"}
            kube.set_pod_ready("s2", False)
            expect(epp, {"s1-rank-0", "s1-rank-1"}, "s2 unready")
        finally:
            epp.stop()
