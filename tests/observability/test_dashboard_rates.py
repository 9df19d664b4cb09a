"""Every `rate()` / `increase()` in the shipped dashboard and alert rules is taken of a counter or a histogram
that epp exports: a gauge under `rate()` draws nonsense (as a scrape-error gauge once did)."""

from __future__ import annotations

import json
import re

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.validation import REPO
from tests.observability.test_rules import exported_registry

DASHBOARD = REPO / "deploy" / "observability" / "grafana-dashboard.json"
ALERTS = REPO / "deploy" / "observability" / "alerts.yaml"
_RATED = re.compile(r"\b(?:rate|increase|irate)\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")


def expressions() -> list[str]:
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(DASHBOARD.read_text()))
    found += re.findall(r"expr: (.+)", ALERTS.read_text())
    return found


def family_types() -> dict[str, str]:
    """Family name → type, for every family epp registers (with or without series yet)."""
    text = generate_latest(exported_registry()).decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def type_of(series: str, types: dict[str, str]) -> str:
    """The type of the family a series name belongs to (a counter's `_total`, a histogram's parts)."""
    for suffix in ("", "_total", "_bucket", "_sum", "_count"):
        family = series.removesuffix(suffix) if suffix else series
        if (not suffix or series.endswith(suffix)) and family in types:
            return types[family]
    return "not exported"


def test_rates_are_taken_of_counters_and_histograms() -> None:
    types = family_types()
    rated = {name for expr in expressions() for name in _RATED.findall(expr)}
    assert rated, "no rate() found: the expression parser is broken"
    assert type_of("inference_pool_ready_pods", types) == "gauge"  # what a wrong rate() would be caught as
    wrong = {name: type_of(name, types) for name in rated if type_of(name, types) not in ("counter", "histogram")}
    assert not wrong, f"rate() of series that are not counters or histogram parts: {wrong}"
