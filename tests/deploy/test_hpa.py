"""The HPA examples scale past 2 replicas: their desired count follows the Kubernetes HPA algorithm for
External metrics (`Value`: ceil(current · metric / target); `AverageValue`: ceil(metric / target), no current
count), with the controller's default 10 % tolerance."""

from __future__ import annotations

import math
from typing import Any

import pytest
import yaml

from tests.deploy.test_manifests import PLACEHOLDERS
from tests.deploy.validation import REPO

HPA_FILE = "deploy/observability/hpa.yaml"
TOLERANCE = 0.1


def shipped_hpas() -> list[dict[str, Any]]:
    text = (REPO / HPA_FILE).read_text()
    for placeholder, value in PLACEHOLDERS[HPA_FILE].items():
        text = text.replace(placeholder, value)
    return [doc for doc in yaml.safe_load_all(text) if doc and doc.get("kind") == "HorizontalPodAutoscaler"]


def desired_replicas(hpa: dict[str, Any], current: int, metric: float) -> int:
    """One HPA step for a single External metric, as kube-controller-manager computes it."""
    spec = hpa["spec"]
    target = spec["metrics"][0]["external"]["target"]
    if target["type"] == "Value":
        ratio = metric / float(target["value"])
        wanted = current if abs(ratio - 1.0) <= TOLERANCE else math.ceil(current * ratio)
    elif target["type"] == "AverageValue":
        ratio = metric / (float(target["averageValue"]) * current)
        wanted = current if abs(ratio - 1.0) <= TOLERANCE else math.ceil(metric / float(target["averageValue"]))
    else:
        raise AssertionError(f"unexpected target type {target['type']}")
    return max(int(spec["minReplicas"]), min(int(spec["maxReplicas"]), wanted))


def grow(hpa: dict[str, Any], metric: float, steps: int = 10) -> int:
    """Replicas after `steps` scaling decisions while the pool average stays at `metric`."""
    replicas = int(hpa["spec"]["minReplicas"])
    for _ in range(steps):
        replicas = desired_replicas(hpa, replicas, metric)
    return replicas


@pytest.mark.parametrize("hpa", shipped_hpas(), ids=lambda hpa: hpa["metadata"]["name"])
def test_a_saturated_pool_scales_to_the_maximum(hpa: dict[str, Any]) -> None:
    assert grow(hpa, metric=0.95) == int(hpa["spec"]["maxReplicas"])


@pytest.mark.parametrize("hpa", shipped_hpas(), ids=lambda hpa: hpa["metadata"]["name"])
def test_a_pool_at_its_target_keeps_its_size_and_an_idle_one_shrinks(hpa: dict[str, Any]) -> None:
    assert desired_replicas(hpa, 4, metric=0.7) == 4
    assert desired_replicas(hpa, 4, metric=0.2) == 2


def test_an_average_value_target_on_a_pool_average_never_passes_two_replicas() -> None:
    """Why the examples use Value: the same HPA with an AverageValue target stalls at 2."""
    hpa = shipped_hpas()[0]
    hpa["spec"]["metrics"][0]["external"]["target"] = {"type": "AverageValue", "averageValue": "0.7"}
    assert grow(hpa, metric=1.0) == 2
