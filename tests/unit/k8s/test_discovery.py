"""KubernetesDiscovery in process against kubesim: v1 and v1alpha2 pools, selector mode, objectives,
rewrites and InferenceModels filtered by poolRef, a broken pool edit, missing CRDs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config

from epp.datastore.table import EndpointTable
from epp.k8s.discovery import DiscoveryError, DiscoveryOptions, KubernetesDiscovery
from epp.k8s.pool import GROUP_V1ALPHA2
from epp.k8s.routing import ModelRouting
from kubesim.kubeconfig import write_kubeconfig
from kubesim.manifests import apply
from kubesim.server import KubeSim
from kubesim.testing import pod_manifest

X = "inference.networking.x-k8s.io/v1alpha2"


async def until(check: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


def keys(table: EndpointTable) -> set[str]:
    return {endpoint.key for _, endpoint in table.items()}


class Harness:
    def __init__(self, api: client.ApiClient, options: DiscoveryOptions) -> None:
        self.table = EndpointTable(32)
        self.routing = ModelRouting(self.table)
        self.objectives: dict[str, int] = {}
        self.synced: list[bool] = []
        self.discovery = KubernetesDiscovery(
            api, options, self.table, self.routing, self.set_objectives, self.synced.append
        )

    def set_objectives(self, priorities: dict[str, int]) -> None:
        self.objectives = priorities


def objective(name: str, priority: int | None, pool: str, group: str | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": pool}
    if group:
        ref["group"] = group
    spec: dict[str, Any] = {"poolRef": ref}
    if priority is not None:
        spec["priority"] = priority
    return {"apiVersion": X, "kind": "InferenceObjective", "metadata": {"name": name}, "spec": spec}


async def test_v1_pool_objectives_and_rewrites(sim: KubeSim, api: client.ApiClient) -> None:
    store = sim.store
    apply(store, {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool", "metadata": {"name": "ga"},
                  "spec": {"selector": {"matchLabels": {"app": "x"}}, "targetPorts": [{"number": 8000}]}})  # fmt: skip
    apply(store, pod_manifest("a", "10.0.0.1", {"app": "x"}))
    apply(store, objective("food-review", 2, "ga"))
    apply(store, objective("unset", None, "ga"))
    apply(store, objective("other-pool", 9, "elsewhere"))
    apply(store, objective("old-group", 9, "ga", "inference.networking.x-k8s.io"))
    harness = Harness(api, DiscoveryOptions(namespace="default", pool_name="ga"))
    await harness.discovery.start()
    try:
        await until(lambda: harness.synced == [True] and keys(harness.table) == {"a-rank-0"})
        await until(lambda: harness.objectives == {"food-review": 2, "unset": 0})
        apply(store, {"apiVersion": X, "kind": "InferenceModelRewrite", "metadata": {"name": "canary"},
                      "spec": {"poolRef": {"name": "ga"}, "rules": [{"matches": [{"model": {"value": "m"}}],
                               "targets": [{"modelRewrite": "m-v2", "weight": 1}]}]}})  # fmt: skip
        await until(lambda: harness.routing.rewrite("m") == ("m-v2", "canary"))
        store.delete(store.type_of(X, "InferenceModelRewrite"), "default", "canary")
        await until(lambda: harness.routing.rewrite("m") is None)
        # a broken pool edit is reported and the last good pool stays in force
        pools = store.type_of("inference.networking.k8s.io/v1", "InferencePool")
        store.patch(pools, "default", "ga", "application/merge-patch+json", {"spec": {"targetPorts": []}})
        await asyncio.sleep(0.2)
        assert keys(harness.table) == {"a-rank-0"}
    finally:
        await harness.discovery.stop()


async def test_v1alpha2_pool_with_inference_models(sim: KubeSim, api: client.ApiClient) -> None:
    store = sim.store
    apply(store, {"apiVersion": X, "kind": "InferencePool", "metadata": {"name": "preview"},
                  "spec": {"selector": {"app": "x"}, "targetPortNumber": 8000}})  # fmt: skip
    apply(store, pod_manifest("a", "10.0.0.1", {"app": "x"}))
    apply(store, {"apiVersion": X, "kind": "InferenceModel", "metadata": {"name": "food-review"},
                  "spec": {"modelName": "food-review", "criticality": "Critical", "poolRef": {"name": "preview"},
                           "targetModels": [{"name": "food-review-1", "weight": 100}]}})  # fmt: skip
    batch = {"modelName": "batch", "criticality": "Sheddable", "poolRef": {"name": "preview"}}
    apply(store, {"apiVersion": X, "kind": "InferenceModel", "metadata": {"name": "batch"}, "spec": batch})
    harness = Harness(api, DiscoveryOptions(namespace="default", pool_name="preview", pool_group=GROUP_V1ALPHA2))
    await harness.discovery.start()
    try:
        await until(lambda: keys(harness.table) == {"a-rank-0"})
        await until(lambda: harness.routing.model_priority("batch") == -1)
        assert harness.routing.model_priority("food-review") == 2
        assert harness.routing.rewrite("food-review") == ("food-review-1", "food-review")
        assert harness.routing.rewrite("batch") is None
        store.delete(store.type_of(X, "InferencePool"), "default", "preview")
        await until(lambda: not keys(harness.table) and harness.synced[-1] is False)
    finally:
        await harness.discovery.stop()


async def test_selector_mode_needs_no_crd(tmp_path: Path) -> None:
    server = KubeSim(inference_crds=False)
    await server.start()
    api = await config.new_client_from_config(config_file=str(write_kubeconfig(server, tmp_path / "kc")))
    try:
        apply(server.store, pod_manifest("a", "10.0.0.1", {"app": "x"}, annotations={}))
        apply(server.store, pod_manifest("b", "10.0.0.2", {"app": "y"}))
        options = DiscoveryOptions(
            namespace="default", selector={"app": "x"}, target_ports=(8000, 8001), metrics_port=9
        )
        harness = Harness(api, options)
        await harness.discovery.start()
        await until(lambda: keys(harness.table) == {"a-rank-0", "a-rank-1"})
        assert all(endpoint.metrics_port is None for _, endpoint in harness.table.items())  # two ports: not used
        await harness.discovery.stop()

        with pytest.raises(DiscoveryError, match="install the InferencePool CRD"):
            await Harness(api, DiscoveryOptions(namespace="default", pool_name="p")).discovery.start()
    finally:
        await api.close()
        await server.stop()


async def test_unreachable_api_is_a_clear_error(tmp_path: Path) -> None:
    server = KubeSim()
    await server.start()
    path = write_kubeconfig(server, tmp_path / "kc")
    await server.stop()
    api = await config.new_client_from_config(config_file=str(path))
    try:
        with pytest.raises(DiscoveryError, match="cannot reach the Kubernetes API"):
            await Harness(api, DiscoveryOptions(namespace="default", pool_name="p")).discovery.start()
    finally:
        await api.close()
