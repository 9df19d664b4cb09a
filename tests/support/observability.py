"""A decision to record, and the queries of the shipped Grafana dashboard."""

from __future__ import annotations

import json

from epp.director import Decision
from epp.scheduling.types import LLMRequest, SchedulingResult
from tests.observability.prom import REPO


def decision(model: str = "m", target: str = "m2", priority: int = 0, size: int = 100) -> Decision:
    request = LLMRequest("id", model, target, {}, priority=priority, body_size=size)
    return Decision(request, SchedulingResult({}, "default"), "10.0.0.1:8000")


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((REPO / "deploy" / "observability" / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
