"""Model routing in Kubernetes mode: canary health (unready or stale targets skipped, metric and log),
candidates by served model, and the director's use of it (pinned header, InferenceModel priority)."""

from __future__ import annotations

import logging
import random
import time
from collections import Counter

import numpy as np
import pytest

from epp.datastore.table import Endpoint, EndpointTable, SlotArray
from epp.director import Director
from epp.k8s.rewrites import Rule, Target
from epp.k8s.routing import ModelRouting
from epp.k8s.served import ServedModels, models_of
from epp.observability.extension import EXTENSION
from epp.requests.openai import ParsedBody
from epp.scheduling.types import LLMRequest, ProfileResult, SchedulingResult

CANARY = Rule("food-review-canary", ("", "food-review-canary", 0), frozenset({"food-review"}),
              (Target("food-review-v1", 90), Target("food-review-v2", 10)))  # fmt: skip


@pytest.fixture
def fleet() -> tuple[EndpointTable, ServedModels, ModelRouting]:
    table = EndpointTable(16)
    served = ServedModels(table)
    for name, ip, model in (("a", "10.0.0.1", "food-review-v1"), ("b", "10.0.0.2", "food-review-v1"),
                            ("c", "10.0.0.3", "food-review-v2")):  # fmt: skip
        slot = table.add(Endpoint(ip, 8000, f"{name}-rank-0"))
        table.metrics_time[slot] = time.monotonic()
        served.set_known([(f"{ip}:8000", frozenset({"base", model}))])
    routing = ModelRouting(table, served, staleness_s=2.0, rng=random.Random(11))
    routing.update([CANARY], [], {})
    EXTENSION.reset()
    return table, served, routing


def unavailable_gauge() -> dict[tuple[str, ...], float]:
    family = EXTENSION.model_rewrite_target_unavailable
    return {labels: family.value(*labels).value for labels in family.children}


def test_healthy_canary_splits(fleet: tuple[EndpointTable, ServedModels, ModelRouting]) -> None:
    _, _, routing = fleet
    counts = Counter(routing.rewrite("food-review")[0] for _ in range(5000))  # type: ignore[index]
    assert 400 <= counts["food-review-v2"] <= 600, counts
    assert routing.rewrite("other-model") is None


def test_stale_target_gets_nothing_then_recovers(
    fleet: tuple[EndpointTable, ServedModels, ModelRouting], caplog: pytest.LogCaptureFixture
) -> None:
    table, _, routing = fleet
    slot_c = table.slot_of("c-rank-0")
    assert slot_c is not None
    table.metrics_time[slot_c] = time.monotonic() - 10.0
    with caplog.at_level(logging.INFO, logger="epp.k8s"):
        picks = {routing.rewrite("food-review")[0] for _ in range(300)}  # type: ignore[index]
        assert picks == {"food-review-v1"}
        assert "target food-review-v2 gets no traffic" in caplog.text
        assert unavailable_gauge()[("food-review-canary", "food-review-v2")] == 1.0
        table.metrics_time[slot_c] = time.monotonic()
        picks = {routing.rewrite("food-review")[0] for _ in range(300)}  # type: ignore[index]
        assert picks == {"food-review-v1", "food-review-v2"}
        assert "target food-review-v2 can serve again" in caplog.text
        assert unavailable_gauge()[("food-review-canary", "food-review-v2")] == 0.0
    assert caplog.text.count("gets no traffic") == 1, "one log line per change, not per request"


def test_target_without_endpoints_is_unavailable(fleet: tuple[EndpointTable, ServedModels, ModelRouting]) -> None:
    table, _, routing = fleet
    table.remove("c-rank-0")  # its pod went unready
    assert not routing.can_serve("food-review-v2")
    assert {routing.rewrite("food-review")[0] for _ in range(200)} == {"food-review-v1"}  # type: ignore[index]


def test_everything_stale_keeps_the_configured_split(fleet: tuple[EndpointTable, ServedModels, ModelRouting]) -> None:
    table, _, routing = fleet
    table.metrics_time[:] = 0.0
    counts = Counter(routing.rewrite("food-review")[0] for _ in range(3000))  # type: ignore[index]
    assert counts["food-review-v2"] > 150


def test_candidates_restricted_to_endpoints_serving_the_target(
    fleet: tuple[EndpointTable, ServedModels, ModelRouting],
) -> None:
    table, _, routing = fleet
    live = table.live_slots()
    assert routing.restrict("food-review-v2", live).tolist() == [table.slot_of("c-rank-0")]
    assert set(routing.restrict("food-review-v1", live).tolist()) == {
        table.slot_of("a-rank-0"),
        table.slot_of("b-rank-0"),
    }
    assert routing.restrict("base", live) is live
    assert routing.restrict("not-served-anywhere", live) is live


def test_models_of_reads_the_openai_model_list() -> None:
    assert models_of({"object": "list", "data": [{"id": "base"}, {"id": "lora-a", "parent": "base"}]}) == {
        "base",
        "lora-a",
    }
    with pytest.raises(ValueError):
        models_of({"models": []})


class FirstCandidate:
    """A scheduler that picks the first candidate and remembers what it was offered."""

    offered: SlotArray = np.empty(0, dtype=np.intp)

    def schedule(self, request: LLMRequest, table: EndpointTable, candidates: SlotArray) -> SchedulingResult:
        self.offered = candidates
        return SchedulingResult({"default": ProfileResult(candidates[:1])}, "default")


def parsed(model: str) -> ParsedBody:
    return ParsedBody({"model": model, "prompt": "hi"}, model, "completions", b"hi", False, "")


def test_director_rewrites_pins_and_prioritises(fleet: tuple[EndpointTable, ServedModels, ModelRouting]) -> None:
    table, _, routing = fleet
    routing.update([CANARY], [], {"food-review": 2})
    scheduler = FirstCandidate()
    director = Director(table, scheduler, models=routing, objectives={"premium": 5})
    slot_c = table.slot_of("c-rank-0")

    decision = director.decide(
        "r1", {"x-gateway-model-name-rewrite": "food-review-v2"}, parsed("food-review"), b"{}", None
    )
    assert decision.request.target_model == "food-review-v2"  # pinned: no weighted choice
    assert scheduler.offered.tolist() == [slot_c]  # only the endpoint serving v2
    assert decision.new_body is not None and b'"food-review-v2"' in decision.new_body
    assert decision.request.priority == 2  # from the InferenceModel of food-review
    director.complete(decision, None)

    decision = director.decide("r2", {"x-gateway-inference-objective": "premium"}, parsed("food-review"), b"{}", None)
    assert decision.request.priority == 5  # the objective header wins
    assert decision.request.target_model in ("food-review-v1", "food-review-v2")
    director.complete(decision, None)

    decision = director.decide("r3", {}, parsed("base"), b"{}", None)
    assert decision.request.target_model == "base" and decision.new_body is None
    assert len(scheduler.offered) == 3
