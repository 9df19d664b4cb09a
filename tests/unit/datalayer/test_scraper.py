from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from typing import Any

import numpy as np
import pytest

from epp.datalayer import client
from epp.datalayer.client import ScrapeWorker
from epp.datalayer.params import CoreMetricsExtractorParams, MetricsDataSourceParams
from epp.datalayer.scraper import ScrapePlane, create_shared_table, scrape_url
from epp.datalayer.staleness import fresh_mask
from epp.datastore.table import Endpoint, EndpointTable
from tests.support.polling import until

from .conftest import PageServer, fixture_page, start_server

ENGINE = "inference.networking.k8s.io/engine-type"


def ep(server: PageServer, name: str, **labels: str) -> Endpoint:
    return Endpoint("127.0.0.1", server.port, name=name, labels=labels, metrics_port=server.port)


def test_scrape_url() -> None:
    src = MetricsDataSourceParams(scheme="https", path="/prometheus/metrics")
    assert scrape_url(src, Endpoint("10.0.0.1", 8000)) == "https://10.0.0.1:8000/prometheus/metrics"
    assert scrape_url(src, Endpoint("::1", 8000, metrics_port=9090)) == "https://[::1]:9090/prometheus/metrics"


async def test_inline_scrape_engines_lora_and_garbled(servers: list[PageServer]) -> None:
    vllm = await start_server(servers, fixture_page("vllm.txt"))
    sgl = await start_server(servers, fixture_page("sglang.txt"))
    table = EndpointTable(8)
    a = table.add(ep(vllm, "a"))
    b = table.add(ep(sgl, "b", **{ENGINE: "sglang"}))
    plane = ScrapePlane()
    plane.start(table, MetricsDataSourceParams(), CoreMetricsExtractorParams(), 0.02, mode="inline")
    try:
        await until(lambda: table.metrics_time[a] > 0 and table.metrics_time[b] > 0)
        assert (table.waiting_queue[a], table.running_requests[a], table.kv_usage[a]) == (3.0, 12.0, 0.4321)
        assert (table.cache_block_size[a], table.cache_num_blocks[a]) == (16.0, 27713.0)
        assert table.lora_active[a] == {"sql-lora", "tweet-lora"} and table.lora_waiting[a] == {"chat-lora"}
        assert table.max_lora[a] == 4.0
        assert (table.waiting_queue[b], table.running_requests[b], table.kv_usage[b]) == (5.0, 7.0, 0.27)
        assert table.cache_num_blocks[b] == 189432.0 and table.lora_active[b] == frozenset()

        # the page changes: values follow, LoRA state changes are applied to the table
        vllm.page = vllm.page.replace(b"vllm:num_requests_waiting{", b'vllm:num_requests_waiting{x="1",').replace(
            b'waiting_lora_adapters="chat-lora"} 1.7638405e+09', b'waiting_lora_adapters=""} 1.7638405e+09'
        )
        vllm.page = vllm.page.replace(b" 3.0\n", b" 42.0\n", 1)
        await until(lambda: table.lora_waiting[a] == frozenset())
        await until(lambda: table.waiting_queue[a] == 42.0)

        # a garbled page keeps the last values, stops advancing metrics_time and counts errors
        errors0, total0 = table.scrape_errors[a], plane.errors_total
        vllm.page = b"\x00\x01garbage{{{ not prometheus\n"
        await until(lambda: table.scrape_errors[a] >= errors0 + 3)
        t_bad = table.metrics_time[a]
        await asyncio.sleep(0.1)
        assert table.metrics_time[a] == t_bad
        assert table.waiting_queue[a] == 42.0 and table.kv_usage[a] == 0.4321
        assert plane.errors_total >= total0 + 3 and plane.scrapes_total > plane.errors_total
        assert table.scrape_errors[b] == 0

        # staleness: the garbled endpoint goes stale, the healthy one stays fresh
        slots = np.array([a, b], dtype=np.intp)
        await asyncio.sleep(0.15)
        assert fresh_mask(table, slots, 0.1, time.monotonic()).tolist() == [False, True]
        assert fresh_mask(table, slots, 30.0, time.monotonic()).tolist() == [True, True]

        # a non-200 answer is an error too; recovery resumes updates
        vllm.status = 500
        vllm.page = fixture_page("vllm.txt")
        e1 = table.scrape_errors[a]
        await until(lambda: table.scrape_errors[a] >= e1 + 2)
        vllm.status = 200
        await until(lambda: table.waiting_queue[a] == 3.0)
        assert fresh_mask(table, slots, 0.5, time.monotonic()).tolist() == [True, True]
    finally:
        await plane.stop()


async def test_inline_timeout_chunked_and_membership(servers: list[PageServer]) -> None:
    slow = await start_server(servers, fixture_page("vllm.txt"))
    slow.hang = True
    chunked = await start_server(servers, fixture_page("trtllm.txt"))
    chunked.chunked = True
    table = EndpointTable(8)
    plane = ScrapePlane()
    plane.start(table, MetricsDataSourceParams(), CoreMetricsExtractorParams(), 0.02, timeout_s=0.1, mode="inline")
    try:
        s = table.add(ep(slow, "slow"))
        c = table.add(ep(chunked, "trt", **{ENGINE: "trtllm-serve"}))
        await until(lambda: table.scrape_errors[s] >= 2)
        assert table.metrics_time[s] == 0.0
        await until(lambda: table.kv_usage[c] == 0.55)
        assert table.cache_block_size[c] == 32.0
        # removed endpoints are no longer scraped
        table.remove("trt")
        await asyncio.sleep(0.05)
        n = chunked.requests
        await asyncio.sleep(0.15)
        assert chunked.requests <= n + 1
    finally:
        await plane.stop()


async def test_engine_configs_override(servers: list[PageServer]) -> None:
    server = await start_server(servers, fixture_page("vllm.txt"))
    params = CoreMetricsExtractorParams.from_dict(
        {
            "engineConfigs": [
                {
                    "name": "vllm",
                    "queuedRequestsSpec": 'vllm:num_requests_waiting_by_reason{reason="capacity"}',
                    "kvUsageSpec": "",
                    "runningRequestsSpec": "vllm:num_requests_running",
                }
            ]
        },
        "p",
    )
    table = EndpointTable(4)
    slot = table.add(ep(server, "a"))
    table.kv_usage[slot] = 0.9  # disabled metric: never overwritten
    plane = ScrapePlane()
    plane.start(table, MetricsDataSourceParams(), params, 0.02, mode="inline")
    try:
        await until(lambda: table.metrics_time[slot] > 0)
        assert (table.waiting_queue[slot], table.running_requests[slot], table.kv_usage[slot]) == (2.0, 12.0, 0.9)
        assert table.lora_active[slot] == frozenset()
    finally:
        await plane.stop()


async def test_process_mode_writes_into_shared_table(servers: list[PageServer]) -> None:
    vllm = await start_server(servers, fixture_page("vllm.txt"))
    triton = await start_server(servers, fixture_page("triton.txt"))
    table, shm = create_shared_table(16)
    try:
        await _exercise_process_mode(table, vllm, triton)
    finally:
        del table
        gc.collect()
        with contextlib.suppress(BufferError):
            shm.close()
        shm.unlink()


async def _exercise_process_mode(table: EndpointTable, vllm: PageServer, triton: PageServer) -> None:
    a = table.add(ep(vllm, "a"))
    plane = ScrapePlane()
    plane.start(table, MetricsDataSourceParams(), CoreMetricsExtractorParams(), 0.02, mode="process")
    try:
        assert plane.is_alive()
        t = table.add(ep(triton, "t", **{ENGINE: "triton-tensorrt-llm"}))
        await until(lambda: table.metrics_time[a] > 0 and table.metrics_time[t] > 0, timeout=10.0)
        assert (table.waiting_queue[a], table.kv_usage[a], table.cache_num_blocks[a]) == (3.0, 0.4321, 27713.0)
        assert (table.waiting_queue[t], table.running_requests[t], table.kv_usage[t]) == (2.0, 6.0, 0.125)
        # LoRA sets come back over the pipe and are applied in this process
        await until(lambda: table.lora_active[a] == {"sql-lora", "tweet-lora"})
        assert table.max_lora[a] == 4.0
        await until(lambda: plane.scrapes_total >= 4)
        vllm.page = b"garbage"
        e0 = table.scrape_errors[a]
        await until(lambda: table.scrape_errors[a] >= e0 + 2)
        assert plane.errors_total >= 2 and table.waiting_queue[a] == 3.0
    finally:
        await plane.stop()
    assert not plane.is_alive()


def test_a_scrape_of_a_departed_pod_never_lands_in_its_successors_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """The serving process frees a slot and reuses it at once; the scrape process hears of it later."""
    table = EndpointTable(4)
    slot = table.add(Endpoint("10.0.0.1", 8000, name="old"))
    lora_updates: list[tuple[object, ...]] = []
    worker = ScrapeWorker(table, 1.0, 1.0, lambda *update: lora_updates.append(update))
    extractor = CoreMetricsExtractorParams()
    engine = extractor.engine_configs[extractor.default_engine]
    page = fixture_page("vllm.txt")

    def scrape_finishes(host: str) -> None:
        target = worker.targets[slot]
        assert target.host == host
        target.busy = True
        worker._done(target, True, page)

    def row() -> tuple[float, ...]:
        return (table.metrics_time[slot], table.waiting_queue[slot], table.kv_usage[slot], table.scrape_errors[slot])

    # reassigned before the old pod's scrape finished: nothing is written, no failure counted
    worker.set_target(slot, int(table.epoch[slot]), "10.0.0.1", 8000, "/metrics", engine)
    table.remove("old")
    assert table.add(Endpoint("10.0.0.2", 8000, name="new")) == slot
    scrape_finishes("10.0.0.1")
    target = worker.targets[slot]
    target.busy = True
    worker._failed(target)
    assert row() == (0.0, 0.0, 0.0, 0.0) and lora_updates == []

    # reassigned while the scrape wrote, after the serving process zeroed the row: the write is undone
    worker.set_target(slot, int(table.epoch[slot]), "10.0.0.2", 8000, "/metrics", engine)
    real_extract = client.extract

    def extract_while_the_slot_changes_hands(*args: Any) -> Any:
        parsed = real_extract(*args)
        table.remove("new")
        table.add(Endpoint("10.0.0.3", 8000, name="newer"))
        return parsed

    monkeypatch.setattr(client, "extract", extract_while_the_slot_changes_hands)
    scrape_finishes("10.0.0.2")
    assert row() == (0.0, 0.0, 0.0, 0.0) and lora_updates == []
    monkeypatch.undo()

    # the current endpoint's scrape is written, and its LoRA update carries the epoch it was made for
    worker.set_target(slot, int(table.epoch[slot]), "10.0.0.3", 8000, "/metrics", engine)
    scrape_finishes("10.0.0.3")
    assert table.metrics_time[slot] > 0 and table.waiting_queue[slot] == 3.0
    assert [update[:2] for update in lora_updates] == [(slot, int(table.epoch[slot]))]


def test_lora_update_for_an_earlier_occupant_of_the_slot_is_dropped() -> None:
    table = EndpointTable(4)
    plane = ScrapePlane()
    plane._table = table
    slot = table.add(Endpoint("10.0.0.1", 8000, name="old"))
    stale = int(table.epoch[slot])
    table.remove("old")
    assert table.add(Endpoint("10.0.0.2", 8000, name="new")) == slot
    plane._apply_lora(slot, stale, frozenset({"a"}), frozenset(), 2.0)
    assert table.lora_active[slot] == frozenset()
    plane._apply_lora(slot, int(table.epoch[slot]), frozenset({"a"}), frozenset(), 2.0)
    assert table.lora_active[slot] == {"a"}
