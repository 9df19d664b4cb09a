"""kubesim speaks the API server's wire protocol to an unmodified client (kubernetes_asyncio)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from epp.k8s.client import KubeConfigError, connect
from kubesim.kubelet import container_command
from kubesim.manifests import apply, load_manifests
from kubesim.server import KubeSim
from kubesim.testing import pod_manifest

POOL = {
    "apiVersion": "inference.networking.k8s.io/v1",
    "kind": "InferencePool",
    "metadata": {"name": "pool", "namespace": "default"},
    "spec": {"selector": {"matchLabels": {"app": "x"}}, "targetPorts": [{"number": 8000}]},
}


async def watch_lines(response: Any, count: int, timeout: float = 3.0) -> list[dict[str, Any]]:
    events = []
    async with asyncio.timeout(timeout):
        while len(events) < count:
            line = await response.content.readline()
            if not line:
                break
            events.append(json.loads(line))
    return events


async def test_list_carries_the_resource_version_and_honours_selectors(sim: KubeSim, api: client.ApiClient) -> None:
    for i, app in enumerate(["x", "x", "y"]):
        apply(sim.store, pod_manifest(f"p{i}", f"10.0.0.{i + 1}", {"app": app}))
    core = client.CoreV1Api(api)
    pods = await core.list_namespaced_pod("default", label_selector="app=x")
    assert [p.metadata.name for p in pods.items] == ["p0", "p1"]
    assert int(pods.metadata.resource_version) == sim.store.rv
    assert [
        p.metadata.name for p in (await core.list_namespaced_pod("default", label_selector="app in (y,z)")).items
    ] == ["p2"]
    assert len((await core.list_namespaced_pod("default", label_selector="app!=x")).items) == 1
    assert [
        p.metadata.name for p in (await core.list_namespaced_pod("default", field_selector="metadata.name=p1")).items
    ] == ["p1"]
    page = await core.list_namespaced_pod("default", limit=2)
    assert len(page.items) == 2 and page.metadata._continue
    rest = await core.list_namespaced_pod("default", limit=2, _continue=page.metadata._continue)
    assert [p.metadata.name for p in rest.items] == ["p2"] and not rest.metadata._continue
    assert pods.items[0].status.pod_ip == "10.0.0.1"
    assert pods.items[0].status.conditions[1].type == "Ready"


async def test_watch_streams_events_from_a_resource_version(sim: KubeSim, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    apply(sim.store, pod_manifest("a", "10.0.0.1", {"app": "x"}))
    start = (await core.list_namespaced_pod("default")).metadata.resource_version
    apply(sim.store, pod_manifest("b", "10.0.0.2", {"app": "x"}))  # happened after the list: replayed
    response = await core.list_namespaced_pod(
        "default", watch=True, resource_version=start, label_selector="app=x", _preload_content=False
    )
    pods = sim.store.type_of("v1", "Pod")
    sim.store.patch(pods, "default", "a", "application/merge-patch+json", {"metadata": {"labels": {"tier": "1"}}})
    sim.store.patch(pods, "default", "b", "application/merge-patch+json", {"metadata": {"labels": {"app": "z"}}})
    sim.store.delete(pods, "default", "a", 0)
    events = await watch_lines(response, 5)
    response.release()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "b"),
        ("MODIFIED", "b"),  # apply wrote b's status through the status subresource
        ("MODIFIED", "a"),
        ("DELETED", "b"),  # b left the selector: a filtered watch sees it deleted
        ("DELETED", "a"),
    ]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and versions[-1] == sim.store.rv


async def test_watch_without_version_starts_with_synthetic_adds_and_sends_bookmarks(
    sim: KubeSim, api: client.ApiClient
) -> None:
    apply(sim.store, POOL)
    custom = client.CustomObjectsApi(api)
    response = await custom.list_namespaced_custom_object(
        "inference.networking.k8s.io", "v1", "default", "inferencepools",
        watch=True, allow_watch_bookmarks=True, _preload_content=False,
    )  # fmt: skip
    events = await watch_lines(response, 2)
    response.release()
    assert events[0]["type"] == "ADDED" and events[0]["object"]["spec"]["targetPorts"] == [{"number": 8000}]
    assert events[1]["type"] == "BOOKMARK"
    assert events[1]["object"]["metadata"]["resourceVersion"] == str(sim.store.rv)


async def test_too_old_resource_version_is_410_gone(sim: KubeSim, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    old = (await core.list_namespaced_pod("default")).metadata.resource_version
    apply(sim.store, pod_manifest("a", "10.0.0.1", {"app": "x"}))
    sim.store.compact()
    response = await core.list_namespaced_pod("default", watch=True, resource_version=old, _preload_content=False)
    [event] = await watch_lines(response, 1)
    response.release()
    assert event["type"] == "ERROR" and event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
    sim.gone_as_status = True
    response = await core.list_namespaced_pod("default", watch=True, resource_version=old, _preload_content=False)
    assert response.status == 410
    response.release()


async def test_dropped_watches_end_the_stream(sim: KubeSim, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    response = await core.list_namespaced_pod("default", watch=True, _preload_content=False)
    await asyncio.sleep(0.05)
    assert sim.store.drop_watches() == 1
    assert await watch_lines(response, 1) == []  # clean end of stream
    response.release()
    response = await core.list_namespaced_pod("default", watch=True, _preload_content=False)
    await asyncio.sleep(0.05)
    sim.store.drop_watches(abrupt=True)
    with pytest.raises(Exception):  # noqa: B017 - aiohttp reports the cut as a payload or connection error
        await watch_lines(response, 1)
    response.release()


async def test_writes_conflicts_status_and_generation(sim: KubeSim, api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    group = ("inference.networking.k8s.io", "v1", "default", "inferencepools")
    created = await custom.create_namespaced_custom_object(*group, {**POOL, "status": {"parents": []}})
    assert created["metadata"]["generation"] == 1 and "status" not in created  # status only via /status
    with pytest.raises(ApiException) as exists:
        await custom.create_namespaced_custom_object(*group, POOL)
    assert exists.value.status == 409 and json.loads(exists.value.body)["reason"] == "AlreadyExists"

    changed = {**created, "spec": {**created["spec"], "targetPorts": [{"number": 8001}]}}
    updated = await custom.replace_namespaced_custom_object(*group, "pool", changed)
    assert updated["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as stale:
        await custom.replace_namespaced_custom_object(*group, "pool", changed)  # old resourceVersion
    assert stale.value.status == 409 and json.loads(stale.value.body)["reason"] == "Conflict"

    status = await custom.patch_namespaced_custom_object_status(
        *group,
        "pool",
        {"status": {"parents": [{"parentRef": {"name": "gw"}}]}},
        _content_type="application/merge-patch+json",
    )
    assert status["status"]["parents"][0]["parentRef"]["name"] == "gw"
    assert status["metadata"]["generation"] == 2  # a status write is not a spec change
    patched = await custom.patch_namespaced_custom_object(
        *group, "pool", [{"op": "replace", "path": "/spec/targetPorts/0/number", "value": 8002}]
    )
    assert patched["spec"]["targetPorts"] == [{"number": 8002}] and patched["status"] == status["status"]
    with pytest.raises(ApiException) as missing:
        await custom.get_namespaced_custom_object(*group, "nope")
    assert missing.value.status == 404


async def test_strategic_merge_patch_merges_conditions_by_type(sim: KubeSim, api: client.ApiClient) -> None:
    apply(sim.store, pod_manifest("a", "10.0.0.1", {"app": "x"}))
    core = client.CoreV1Api(api)
    pod = await core.patch_namespaced_pod_status(
        "a", "default", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    )
    conditions = {c.type: c.status for c in pod.status.conditions}
    assert conditions["Ready"] == "False" and conditions["PodScheduled"] == "True"


async def test_graceful_pod_delete_sets_deletion_timestamp_first(sim: KubeSim, api: client.ApiClient) -> None:
    apply(sim.store, pod_manifest("a", "10.0.0.1", {"app": "x"}))
    core = client.CoreV1Api(api)
    await core.delete_namespaced_pod("a", "default", grace_period_seconds=1)
    pod = await core.read_namespaced_pod("a", "default")
    assert pod.metadata.deletion_timestamp is not None
    await asyncio.sleep(1.2)
    with pytest.raises(ApiException) as gone:
        await core.read_namespaced_pod("a", "default")
    assert gone.value.status == 404


async def test_leases_use_optimistic_concurrency(api: client.ApiClient) -> None:
    leases = client.CoordinationV1Api(api)
    body = client.V1Lease(metadata=client.V1ObjectMeta(name="l"), spec=client.V1LeaseSpec(holder_identity="a"))
    lease = await leases.create_namespaced_lease("default", body)
    first, second = (
        await leases.read_namespaced_lease("l", "default"),
        await leases.read_namespaced_lease("l", "default"),
    )
    first.spec.holder_identity = "b"
    await leases.replace_namespaced_lease("l", "default", first)
    second.spec.holder_identity = "c"
    with pytest.raises(ApiException) as conflict:
        await leases.replace_namespaced_lease("l", "default", second)
    assert conflict.value.status == 409
    assert (await leases.read_namespaced_lease("l", "default")).spec.holder_identity == "b"
    assert lease.spec.holder_identity == "a"


async def test_discovery_documents_and_crds(sim: KubeSim, api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    resources = await custom.get_api_resources("inference.networking.x-k8s.io", "v1alpha2")
    names = {r.name for r in resources.resources}
    assert {"inferencepools", "inferencemodels", "inferenceobjectives", "inferencemodelrewrites"} <= names
    groups = await client.ApisApi(api).get_api_versions()
    assert "inference.networking.k8s.io" in {g.name for g in groups.groups}
    core = await client.CoreApi(api).get_api_versions()
    assert core.versions == ["v1"]
    with pytest.raises(ApiException) as unknown:
        await custom.get_api_resources("example.com", "v1")
    assert unknown.value.status == 404
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [{"name": "v1", "served": True, "storage": True}],
        },
    }
    apply(sim.store, crd)
    assert {r.name for r in (await custom.get_api_resources("example.com", "v1")).resources} == {"widgets"}
    await custom.create_namespaced_custom_object(
        "example.com",
        "v1",
        "default",
        "widgets",
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
    )
    sim.store.delete(
        sim.store.type_of("apiextensions.k8s.io/v1", "CustomResourceDefinition"), "", "widgets.example.com"
    )
    with pytest.raises(ApiException):
        await custom.get_api_resources("example.com", "v1")


async def test_namespaces_must_exist(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException) as missing:
        await core.create_namespaced_config_map("nowhere", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c")))
    assert missing.value.status == 404 and "nowhere" in json.loads(missing.value.body)["message"]


async def test_token_auth_and_tls_with_the_in_cluster_configuration(tmp_path: Path) -> None:
    server = KubeSim(token="s3cret", tls=True)
    await server.start()
    try:
        from kubesim.kubeconfig import write_service_account

        env = write_service_account(server, tmp_path / "sa", "default")
        api, source = await connect(environ=env, service_account_dir=tmp_path / "sa")
        assert "in-cluster" in source
        assert (await client.CoreV1Api(api).list_namespaced_pod("default")).items == []
        await api.close()
        (tmp_path / "sa" / "token").write_text("wrong")
        api, _ = await connect(environ=env, service_account_dir=tmp_path / "sa")
        with pytest.raises(ApiException) as denied:
            await client.CoreV1Api(api).list_namespaced_pod("default")
        assert denied.value.status == 401
        await api.close()
    finally:
        await server.stop()


async def test_kubeconfig_from_the_environment_and_clear_errors(sim: KubeSim, tmp_path: Path) -> None:
    from kubesim.kubeconfig import write_kubeconfig

    path = write_kubeconfig(sim, tmp_path / "kc")
    api, source = await connect(environ={"KUBECONFIG": str(path)}, service_account_dir=tmp_path / "none")
    assert source == f"KUBECONFIG {path}"
    await api.close()
    with pytest.raises(KubeConfigError, match="KUBECONFIG unset"):
        await connect(environ={"HOME": str(tmp_path)}, service_account_dir=tmp_path / "none")
    (tmp_path / "broken").write_text("clusters: [")
    with pytest.raises(KubeConfigError):
        await connect(environ={"KUBECONFIG": str(tmp_path / "broken")}, service_account_dir=tmp_path / "none")


def test_listens_on_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        KubeSim(host="0.0.0.0")


def test_manifests_and_lists() -> None:
    text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n---\n"
    assert [o["metadata"]["name"] for o in load_manifests(text)] == ["a"]
    with pytest.raises(ValueError, match="not a Kubernetes object"):
        load_manifests("just: text\n")


def test_cli_serves_applies_and_writes_a_kubeconfig(tmp_path: Path) -> None:
    manifest = tmp_path / "pool.yaml"
    manifest.write_text(json.dumps(POOL))
    kubeconfig = tmp_path / "kubeconfig"
    server = subprocess.Popen(
        [sys.executable, "-m", "kubesim", "--port", "0", "--kubeconfig", str(kubeconfig), "-f", str(manifest)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline().decode()
        assert "kubesim: serving http://127.0.0.1:" in line and "1 objects applied" in line
        pods = tmp_path / "pods.yaml"
        pods.write_text(json.dumps(pod_manifest("p", "10.1.1.1", {"app": "x"})))
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "kubesim",
                "apply",
                "--kubeconfig",
                str(kubeconfig),
                "-f",
                str(pods),
                "-f",
                str(manifest),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split("\n")[:2] == ["pod/p created", "inferencepool/pool configured"]
    finally:
        server.terminate()
        server.wait(10)


def test_container_command_mounts_config_maps_and_empty_dirs_once(tmp_path: Path) -> None:
    """A ConfigMap file arg goes to its local directory even when that directory lies under another
    mountPath (/tmp, an emptyDir); emptyDir volumes become empty directories."""
    deployment = {
        "metadata": {"name": "epp", "namespace": "ns"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "epp",
                            "args": ["--config-file", "/config/a.yaml", "--scratch=/tmp/x"],
                            "volumeMounts": [
                                {"name": "config", "mountPath": "/config"},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [{"name": "config", "configMap": {"name": "cm"}}, {"name": "tmp", "emptyDir": {}}],
                }
            }
        },
    }
    config_map = {"data": {"a.yaml": "kind: EndpointPickerConfig\n"}}
    command = container_command(deployment, {"cm": config_map}, "epp-1")
    try:
        config = Path(command.args[1])
        assert config == command.volume_root / "config" / "a.yaml"
        assert config.read_text() == "kind: EndpointPickerConfig\n"
        assert command.args[2] == "--scratch=/tmp/x"  # only whole args that are paths are rewritten
        assert (command.volume_root / "tmp").is_dir() and not any((command.volume_root / "tmp").iterdir())
    finally:
        shutil.rmtree(command.volume_root, ignore_errors=True)


def test_the_kubelet_reuses_the_addresses_of_stopped_pods() -> None:
    # it handed out .2 to .254 once and then refused every pod (a soak adds and removes one each second)
    from kubesim.kubelet import Kubelet, SimPod

    kubelet = Kubelet(kube=None, subnet=251)  # type: ignore[arg-type]
    kubelet._next_host = 253
    first, second = kubelet.allocate_ip([8000]), kubelet.allocate_ip([8000])
    assert (first, second) == ("127.0.251.253", "127.0.251.254")
    running = SimPod("p", "default", "127.0.251.2", [8000], None, Path("/dev/null"))  # type: ignore[arg-type]
    kubelet.pods[("default", "p")] = running
    assert kubelet.allocate_ip([8000]) == "127.0.251.3"  # wrapped around, past the running pod's address
