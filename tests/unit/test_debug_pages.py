"""The metrics port's /debug pages, served by the real HTTP server over the real director and scheduler.

The core check: every score /debug/decisions shows is the one the picker was handed. The picker is watched
(its `pick` wrapped to copy what it receives) while decisions are made on a pool whose load changes between
picks; the page's totals must equal the picker's input exactly, and each total the weighted sum of the
page's per-scorer scores."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from google.protobuf import struct_pb2
from prometheus_client import CollectorRegistry

from epp.config.schema import load_config_file, load_config_text
from epp.datastore.table import Endpoint, EndpointTable
from epp.director import Director
from epp.errors import EppError
from epp.extproc.messages import SCORES_KEY, set_endpoint_scores
from epp.observability.debug import DebugPages
from epp.observability.decisions import DecisionLog
from epp.observability.server import start_metrics_server
from epp.requests.openai import parse_openai_body
from epp.scheduling.framework import SchedulerRuntime, build_scheduler

CONFIG = """
plugins:
- {type: label-selector-filter, name: gpu-only, parameters: {matchLabels: {accelerator: gpu}}}
- {type: queue-scorer}
- {type: kv-cache-utilization-scorer}
- {type: prefix-cache-scorer}
- {type: max-score-picker}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: gpu-only}
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 1.5}
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: max-score-picker}
"""
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def make_pool() -> EndpointTable:
    table = EndpointTable(32)
    for i in range(6):
        labels = {"accelerator": "cpu" if i == 5 else "gpu", "zone": f"z{i % 2}"}
        table.add(Endpoint(f"10.0.0.{i + 1}", 8000, name=f"pod-{i}", labels=labels))
    return table


class Stack:
    def __init__(self, capacity: int = 50) -> None:
        self.table = make_pool()
        self.config = load_config_text(CONFIG, "test")
        self.scheduler: SchedulerRuntime = build_scheduler(self.config, self.table)
        self.scheduler.trace = True
        self.log = DecisionLog(self.table, capacity)
        self.director = Director(self.table, self.scheduler, hooks=self.scheduler, decisions=self.log)
        #: (request id, candidates, scores) as the picker received them
        self.seen: list[tuple[str, list[int], list[float]]] = []
        profile = self.scheduler.profile
        assert profile is not None
        picker, current = profile.picker, [""]
        original = picker.pick

        def watched(state: Any, candidates: np.ndarray, scores: np.ndarray) -> np.ndarray:
            self.seen.append((current[0], candidates.tolist(), scores.tolist()))
            return original(state, candidates, scores)

        picker.pick = watched  # type: ignore[method-assign]
        self.current = current
        producers = [p for p in self.scheduler.plugins.values() if hasattr(p, "blocks_held")]
        self.pages = DebugPages(
            self.table, self.log, "test-pool", 2.0, {"debug_decisions": capacity}, [], self.config.describe(), producers
        )
        self.server, _ = start_metrics_server(0, CollectorRegistry(), self.pages)
        self.port = self.server.server_port

    def decide(self, request_id: str, prompt: str) -> str:
        self.current[0] = request_id
        body = json.dumps({"model": "m", "prompt": prompt}).encode()
        decision = self.director.decide(request_id, {}, parse_openai_body(body, "/v1/completions"), body, None)
        self.director.complete(decision, None)  # runs the deferred hooks (prefix insert) and releases the load
        return decision.destination

    def get(self, path: str, method: str = "GET") -> tuple[int, bytes, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        try:
            with _OPENER.open(request, timeout=5) as response:
                return response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers.get("Content-Type", "")

    def json(self, path: str) -> Any:
        status, body, kind = self.get(path)
        assert status == 200 and kind == "application/json", body
        return json.loads(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stack() -> Iterator[Stack]:
    stack = Stack()
    yield stack
    stack.close()


def test_decisions_show_the_scores_the_picker_was_handed(stack: Stack) -> None:
    rng = np.random.default_rng(7)
    destinations = {}
    prompts = [f"system prompt {k}: " + "be brief. " * 60 for k in range(3)]
    for i in range(24):
        slots = stack.table.live_slots()
        stack.table.waiting_queue[slots] = rng.integers(0, 12, len(slots))  # load moves between picks
        stack.table.kv_usage[slots] = rng.random(len(slots))
        destinations[f"req-{i}"] = stack.decide(f"req-{i}", prompts[i % 3] + f"question {i}")

    page = stack.json("/debug/decisions?candidates=all")
    assert page["recorded"] == 24 and len(page["decisions"]) == 24
    assert [d["request_id"] for d in page["decisions"]] == [f"req-{i}" for i in reversed(range(24))]
    hostports = stack.table.hostports
    weights = {"queue-scorer": 2.0, "kv-cache-utilization-scorer": 1.5, "prefix-cache-scorer": 3.0}
    for request_id, candidates, scores in stack.seen:
        [decision] = [d for d in page["decisions"] if d["request_id"] == request_id]
        profile = decision["profiles"]["default"]
        shown = {c["endpoint"]: c for c in profile["candidates"]}
        handed = {hostports[slot]: score for slot, score in zip(candidates, scores, strict=True)}
        assert {e: c["total"] for e, c in shown.items()} == handed, "the page shows exactly the picker's input"
        for candidate in shown.values():
            total = 0.0
            for scorer in profile["scorers"]:
                total += scorer["weight"] * candidate["scores"][scorer["name"]]
            assert total == candidate["total"]
        assert {s["name"]: s["weight"] for s in profile["scorers"]} == weights
        best = max(handed.values())
        assert decision["destination"] == destinations[request_id] == profile["picked"][0]
        assert handed[decision["destination"]] == best, "max-score-picker took a best-scored endpoint"
        [gpu_only] = profile["filters"]
        assert gpu_only == {"name": "gpu-only", "type": "label-selector-filter", "in": 6, "kept": 5,
                            "removed": ["10.0.0.6:8000"]}  # fmt: skip
    # the prefix producer learned from the picks: later requests of a prompt score its holder
    latest = page["decisions"][0]["profiles"]["default"]["candidates"]
    assert any(c["scores"]["prefix-cache-scorer"] > 0 for c in latest)


def test_queries_ring_bound_and_failures() -> None:
    stack = Stack(capacity=5)  # the ring's size, what --debug-decisions sets
    try:
        for i in range(12):
            stack.decide(f"r{i}", f"hello {i}")
        page = stack.json("/debug/decisions")
        assert page["capacity"] == 5 and page["recorded"] == 12
        assert [d["request_id"] for d in page["decisions"]] == ["r11", "r10", "r9", "r8", "r7"]
        assert [d["request_id"] for d in stack.json("/debug/decisions?limit=2")["decisions"]] == ["r11", "r10"]
        [only] = stack.json("/debug/decisions?request_id=r9")["decisions"]
        assert only["sequence"] == 9 and only["outcome"] == "routed"
        top = stack.json("/debug/decisions?limit=1&candidates=2")["decisions"][0]["profiles"]["default"]
        assert top["candidates_total"] == 5 and len(top["candidates"]) == 2
        assert top["candidates"][0]["endpoint"] == top["picked"][0], "among equal totals the picked one comes first"
        status, body, _ = stack.get("/debug/decisions?limit=many")
        assert status == 400 and b"?limit='many'" in body

        # every GPU endpoint leaves: the filter empties the candidates, the failure is recorded with the reason
        for i in range(5):
            stack.table.remove(f"pod-{i}")
        with pytest.raises(EppError):
            stack.decide("r-none", "hello")
        failed = stack.json("/debug/decisions?limit=1")["decisions"][0]
        assert failed["request_id"] == "r-none" and failed["outcome"] == "failed" and failed["destination"] == ""
        assert "no endpoints available" in failed["error"]
        assert failed["profiles"]["default"]["filters"][0] == {
            "name": "gpu-only", "type": "label-selector-filter", "in": 1, "kept": 0, "removed": ["10.0.0.6:8000"],
        }  # fmt: skip
        # a request refused before the scheduler ran (no endpoint left at all) is recorded too
        stack.table.remove("pod-5")
        with pytest.raises(EppError):
            stack.decide("r-empty", "hello")
        refused = stack.json("/debug/decisions?limit=1")["decisions"][0]
        assert (refused["request_id"], refused["outcome"], refused["method"]) == ("r-empty", "failed", "admission")
        assert refused["error"] == "ServiceUnavailable: failed to find endpoint candidates for serving the request"
        # records keep naming the endpoints they chose among after those left
        assert stack.json("/debug/decisions?request_id=r11")["decisions"][0]["destination"].startswith("10.0.0.")
    finally:
        stack.close()


def test_endpoints_config_status_page_and_unknown_paths(stack: Stack) -> None:
    for i in range(4):
        stack.decide(f"r{i}", "a shared system prompt. " * 40 + str(i))
    slot = stack.table.slot_of("pod-2")
    assert slot is not None
    stack.table.waiting_queue[slot] = 7
    stack.table.metrics_time[slot] = stack.pages.clock() - 0.5
    stack.table.inflight_requests[slot] = 2  # routed since the scrape (its in-flight count then was 0)
    page = stack.json("/debug/endpoints")
    assert page["pool"] == "test-pool" and page["count"] == 6
    rows = {row["name"]: row for row in page["endpoints"]}
    pod = rows["pod-2"]
    assert pod["endpoint"] == "10.0.0.3:8000" and pod["labels"] == {"accelerator": "gpu", "zone": "z0"}
    assert pod["scraped"]["waiting_queue"] == 7 and pod["in_flight"]["requests"] == 2
    assert pod["load"]["waiting_queue"] == 9, "scraped 7 plus 2 routed since the scrape"
    assert 0.4 < pod["metrics_age_seconds"] < 5 and pod["metrics_stale"] is False
    assert rows["pod-0"]["metrics_age_seconds"] is None and rows["pod-0"]["metrics_stale"] is True
    held = sum(row["prefix_blocks"]["approx-prefix-cache-producer"] for row in rows.values())
    assert held > 0, "the pods the prompts went to hold their blocks"

    config = stack.json("/debug/config")
    assert config["flags"] == {"debug-decisions": 50}
    assert [p["type"] for p in config["config"]["plugins"]][:2] == ["label-selector-filter", "queue-scorer"]

    status, body, kind = stack.get("/debug")
    assert status == 200 and kind.startswith("text/html")
    html = body.decode()
    assert "test-pool" in html and "10.0.0.3:8000" in html and "r3" in html and "<script" not in html
    assert 'http-equiv="refresh"' in html and 'http-equiv="refresh"' not in stack.get("/debug?refresh=0")[1].decode()

    assert stack.get("/nope")[0] == 404 and stack.get("/debug/nope")[0] == 404
    assert stack.get("/debug/endpoints", "POST")[0] == 405


def test_pages_are_built_off_the_event_loop_while_decisions_are_recorded(stack: Stack) -> None:
    """The ring is written by one thread and read by another without a lock."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                stack.json("/debug/decisions?limit=10")
        except BaseException as exc:  # reported below
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(300):
            stack.decide(f"c{i}", f"prompt {i % 7}")
    finally:
        stop.set()
        reader.join(10)
    assert not errors
    assert stack.json("/debug/decisions?limit=1")["decisions"][0]["request_id"] == "c299"


def test_prefill_decode_decisions_show_both_profiles_and_the_metadata_the_decode_pick() -> None:
    table = EndpointTable(8)
    for i, role in enumerate(["prefill", "prefill", "decode", "decode", "decode"]):
        table.add(Endpoint(f"10.1.0.{i + 1}", 8000, name=f"{role}-{i}", labels={"llm-d.ai/role": role}))
    scheduler = build_scheduler(load_config_file("config/pd-disagg.yaml"), table)
    scheduler.trace = True
    log = DecisionLog(table)
    director = Director(table, scheduler, hooks=scheduler, decisions=log)
    body = json.dumps({"model": "m", "prompt": "a long prompt nobody has seen. " * 200}).encode()
    decision = director.decide("pd-1", {}, parse_openai_body(body, "/v1/completions"), body, None)

    [described] = log.describe()["decisions"]
    assert described["primary_profile"] == "decode" and set(described["profiles"]) == {"decode", "prefill"}
    decode, prefill = described["profiles"]["decode"], described["profiles"]["prefill"]
    assert decode["filters"][0]["removed"] == ["10.1.0.1:8000", "10.1.0.2:8000"]
    assert {c["name"] for c in decode["candidates"]} == {"decode-2", "decode-3", "decode-4"}
    assert {c["name"] for c in prefill["candidates"]} == {"prefill-0", "prefill-1"}
    assert decode["picked"] == [decision.destination]
    assert decision.headers["x-prefiller-host-port"] == prefill["picked"][0]

    metadata = struct_pb2.Struct()
    set_endpoint_scores(metadata.fields, decision.result, table.hostports)
    scores = dict(metadata.fields[SCORES_KEY].struct_value.fields)
    assert {k: v.number_value for k, v in scores.items()} == {c["endpoint"]: c["total"] for c in decode["candidates"]}
