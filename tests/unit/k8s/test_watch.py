"""The reflector (list + watch) against kubesim: resume from a resourceVersion, bookmarks, reconnect after a
cut, relist after 410 Gone with deletions reported, paged lists, backoff on API errors."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio import client

from epp.k8s import watch as watch_module
from epp.k8s.watch import Backoff, Object
from kubesim.manifests import apply
from kubesim.server import KubeSim
from kubesim.testing import pod_manifest
from tests.support.polling import until
from tests.support.watch import Recorder, pods_reflector


async def test_list_then_watch_follows_changes_and_bookmarks(sim: KubeSim, api: client.ApiClient) -> None:
    apply(sim.store, pod_manifest("a", "10.0.0.1", {"app": "x"}))
    recorder = Recorder()
    reflector = pods_reflector(api, recorder, label_selector="app=x")
    reflector.start()
    try:
        await asyncio.wait_for(reflector.synced.wait(), 3)
        assert recorder.log == [("replace", "a")]
        apply(sim.store, pod_manifest("b", "10.0.0.2", {"app": "x"}))
        apply(sim.store, pod_manifest("c", "10.0.0.3", {"app": "other"}))
        await until(lambda: "b" in recorder.state)
        await until(lambda: reflector.stats.bookmarks > 0)
        assert reflector.resource_version == str(sim.store.rv)  # bookmarks advance it past unrelated writes
        assert "c" not in recorder.state
        assert reflector.stats.lists == 1
    finally:
        await reflector.stop()


async def test_cut_watch_resumes_without_relisting_and_misses_nothing(sim: KubeSim, api: client.ApiClient) -> None:
    apply(sim.store, pod_manifest("a", "10.0.0.1", {"app": "x"}))
    recorder = Recorder()
    reflector = pods_reflector(api, recorder)
    reflector.start()
    try:
        await asyncio.wait_for(reflector.synced.wait(), 3)
        await until(lambda: len(sim.store.watches) == 1)
        sim.store.drop_watches(abrupt=True)
        pods = sim.store.type_of("v1", "Pod")
        sim.store.delete(pods, "default", "a", 0)  # while disconnected
        apply(sim.store, pod_manifest("b", "10.0.0.2", {"app": "x"}))
        await until(lambda: set(recorder.state) == {"b"})
        sim.store.drop_watches()  # a clean end of stream: resumed at once
        apply(sim.store, pod_manifest("c", "10.0.0.3", {"app": "x"}))
        await until(lambda: set(recorder.state) == {"b", "c"})
        assert reflector.stats.lists == 1 and reflector.stats.watches >= 3
        assert ("delete", "a") in recorder.log
    finally:
        await reflector.stop()


async def test_410_gone_relists_and_reports_what_disappeared(sim: KubeSim, api: client.ApiClient) -> None:
    for name in ("a", "b"):
        apply(sim.store, pod_manifest(name, "10.0.0.1", {"app": "x"}))
    recorder = Recorder()
    reflector = pods_reflector(api, recorder)
    reflector.start()
    try:
        await asyncio.wait_for(reflector.synced.wait(), 3)
        await until(lambda: len(sim.store.watches) == 1)
        sim.store.drop_watches(abrupt=True)
        sim.store.delete(sim.store.type_of("v1", "Pod"), "default", "a", 0)
        apply(sim.store, pod_manifest("c", "10.0.0.3", {"app": "x"}))
        sim.store.compact()
        await until(lambda: reflector.stats.lists == 2)
        assert reflector.stats.gone == 1
        assert set(recorder.state) == {"b", "c"}
        assert ("gone", "a") in recorder.log
    finally:
        await reflector.stop()


async def test_paged_list(sim: KubeSim, api: client.ApiClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch_module, "LIST_PAGE_SIZE", 2)
    for i in range(5):
        apply(sim.store, pod_manifest(f"p{i}", "10.0.0.1", {"app": "x"}))
    recorder = Recorder()
    reflector = pods_reflector(api, recorder)
    reflector.start()
    try:
        await asyncio.wait_for(reflector.synced.wait(), 3)
        assert set(recorder.state) == {f"p{i}" for i in range(5)}
        assert sum(1 for method, path in sim.requests if "limit=2" in path and "watch" not in path) == 3
    finally:
        await reflector.stop()


async def test_api_errors_back_off_and_recover(
    sim: KubeSim, api: client.ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    sim.token = "required"  # the client has none: 401 until the token is dropped again
    recorder = Recorder()
    reflector = pods_reflector(api, recorder)
    reflector.start()
    try:
        await until(lambda: reflector.stats.errors >= 3)
        assert not reflector.synced.is_set()
        assert "pods: HTTP 401: Unauthorized; retrying in" in caplog.text
        sim.token = None
        await asyncio.wait_for(reflector.synced.wait(), 3)
    finally:
        await reflector.stop()


def test_backoff_grows_to_the_cap_and_resets() -> None:
    backoff = Backoff(initial=1.0, cap=4.0)
    delays = [backoff.next() for _ in range(5)]
    assert 0.8 <= delays[0] <= 1.2 and 3.2 <= delays[-1] <= 4.8
    backoff.reset()
    assert backoff.next() <= 1.2


class FailsOnce(Recorder):
    """A listener with a bug that bites once, on the first delete."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def on_delete(self, obj: Object) -> None:
        if not self.failed:
            self.failed = True
            raise KeyError("10.0.0.1:8000")
        super().on_delete(obj)


async def test_a_listener_that_raises_is_reported_and_the_reflector_lists_again(
    sim: KubeSim, api: client.ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    apply(sim.store, pod_manifest("a", "10.0.0.1", {"app": "x"}))
    apply(sim.store, pod_manifest("b", "10.0.0.2", {"app": "x"}))
    recorder = FailsOnce()
    reflector = pods_reflector(api, recorder)
    reflector.start()
    try:
        await asyncio.wait_for(reflector.synced.wait(), 3)
        sim.store.delete(sim.store.type_of("v1", "Pod"), "default", "a", 0)
        await until(lambda: reflector.stats.lists == 2)
        await until(lambda: set(recorder.state) == {"b"})
        assert "pods: applying DELETED ('default', 'a') failed: KeyError: '10.0.0.1:8000'; listing again" in caplog.text
        assert "Traceback" in caplog.text  # the listener's own traceback is logged
        apply(sim.store, pod_manifest("c", "10.0.0.3", {"app": "x"}))  # and the watch goes on
        await until(lambda: "c" in recorder.state)
    finally:
        await reflector.stop()
