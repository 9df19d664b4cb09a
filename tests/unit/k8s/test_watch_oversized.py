"""Watch event lines longer than aiohttp's readline accepts (4 MiB with the read buffer kubernetes_asyncio
sets: it raised LineTooLong, which ended the watch task) and than the reflector's own limit."""

from __future__ import annotations

import asyncio

from kubernetes_asyncio import client

from kubesim.manifests import apply
from kubesim.server import KubeSim
from kubesim.testing import pod_manifest
from tests.support.polling import until
from tests.support.watch import Recorder, pods_reflector


def big_pod(name: str, size: int) -> dict[str, object]:
    return pod_manifest(name, "10.0.0.9", {"app": "x"}, annotations={"blob": "b" * size})


async def test_an_event_over_aiohttps_line_limit_is_followed(sim: KubeSim, api: client.ApiClient) -> None:
    apply(sim.store, pod_manifest("a", "10.0.0.1", {"app": "x"}))
    recorder = Recorder()
    reflector = pods_reflector(api, recorder, label_selector="app=x")
    reflector.start()
    try:
        await asyncio.wait_for(reflector.synced.wait(), 3)
        apply(sim.store, big_pod("big", 5_000_000))
        apply(sim.store, pod_manifest("c", "10.0.0.3", {"app": "x"}))
        await until(lambda: "c" in recorder.state)
        assert len(recorder.state["big"]["metadata"]["annotations"]["blob"]) == 5_000_000
        assert reflector.stats.errors == 0
    finally:
        await reflector.stop()


async def test_an_event_over_the_limit_is_skipped_by_listing_again(sim: KubeSim, api: client.ApiClient) -> None:
    apply(sim.store, pod_manifest("a", "10.0.0.1", {"app": "x"}))
    recorder = Recorder()
    reflector = pods_reflector(api, recorder, label_selector="app=x", max_line_bytes=64 * 1024)
    reflector.start()
    try:
        await asyncio.wait_for(reflector.synced.wait(), 3)
        lists = reflector.stats.lists
        apply(sim.store, big_pod("big", 100_000))
        await until(lambda: "big" in recorder.state)  # from the list that followed the refused event
        assert reflector.stats.lists == lists + 1 and reflector.stats.errors == 1
        apply(sim.store, pod_manifest("c", "10.0.0.3", {"app": "x"}))  # and the watch goes on
        await until(lambda: "c" in recorder.state)
        assert reflector._task is not None and not reflector._task.done()
    finally:
        await reflector.stop()
