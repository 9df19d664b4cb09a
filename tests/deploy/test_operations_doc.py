"""docs/operations.md names exactly the alerts deploy/observability/alerts.yaml ships, with their thresholds,
and only metric families epp exports."""

from __future__ import annotations

import re

import yaml

from tests.deploy.validation import REPO

DOC = REPO / "docs" / "operations.md"
ALERTS = REPO / "deploy" / "observability" / "alerts.yaml"


def shipped_alerts() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def documented_alerts() -> dict[str, str]:
    """The rows of the doc's alert table: | `AlertName` | `expr` | ... |"""
    section = DOC.read_text().split("## What to alert on", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", section, re.M))


def test_the_alert_table_is_the_shipped_rules() -> None:
    assert documented_alerts() == shipped_alerts()
