"""Pool specs (v1, v1alpha2, flags) and pod → endpoints: readiness, ranks, active-ports, labels."""

from __future__ import annotations

from typing import Any

import pytest

from epp.k8s.pool import (
    GROUP_V1,
    GROUP_V1ALPHA2,
    PoolSpec,
    PoolSpecError,
    active_ports,
    parse_selector_flag,
    pod_endpoints,
    pod_is_ready,
    pool_spec,
)


def pod(
    name: str = "vllm-0",
    ip: str = "10.0.0.7",
    labels: dict[str, str] | None = None,
    ready: bool = True,
    annotations: dict[str, str] | None = None,
    terminating: bool = False,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "ns", "labels": labels or {"app": "vllm"}}
    if annotations:
        metadata["annotations"] = annotations
    if terminating:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"phase": "Running", "conditions": [{"type": "Ready", "status": str(ready)}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": metadata, "status": status}


V1_POOL = {
    "metadata": {"name": "pool", "namespace": "ns"},
    "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": 8000}, {"number": 8002}]},
}
V1ALPHA2_POOL = {
    "metadata": {"name": "pool", "namespace": "ns"},
    "spec": {"selector": {"app": "vllm"}, "targetPortNumber": 8000, "extensionRef": {"name": "epp"}},
}


def test_v1_pool_fields() -> None:
    spec = pool_spec(V1_POOL, GROUP_V1)
    assert spec.selector == {"app": "vllm"}
    assert spec.target_ports == (8000, 8002)
    assert spec.app_protocol == "http"
    assert spec.labels_selector == "app=vllm"
    assert spec.name == "ns/pool"


def test_v1alpha2_pool_fields() -> None:
    spec = pool_spec(V1ALPHA2_POOL, GROUP_V1ALPHA2, metrics_port=9100)
    assert spec.selector == {"app": "vllm"}
    assert spec.target_ports == (8000,)
    assert spec.metrics_port == 9100  # one target port: the deprecated metrics port applies


def test_metrics_port_only_with_one_target_port() -> None:
    assert pool_spec(V1_POOL, GROUP_V1, metrics_port=9100).metrics_port is None


@pytest.mark.parametrize(
    ("spec", "group", "message"),
    [
        ({"selector": {"app": "x"}, "targetPorts": [{"number": 8000}]}, GROUP_V1, "spec.selector.matchLabels"),
        ({"selector": {"matchLabels": {"app": "x"}}, "targetPorts": []}, GROUP_V1, "0 target ports"),
        ({"selector": {"matchLabels": {"app": "x"}}, "targetPorts": [{"number": 0}]}, GROUP_V1, "port 0"),
        (
            {"selector": {"matchLabels": {"app": "x"}}, "targetPorts": [{"number": 8000}, {"number": 8000}]},
            GROUP_V1,
            "listed twice",
        ),
        ({"selector": {"matchLabels": {"app": "x"}}, "targetPortNumber": 8000}, GROUP_V1, "spec.targetPorts"),
        ({"selector": {"app": "x"}}, GROUP_V1ALPHA2, "spec.targetPortNumber"),
        (
            {"selector": {"matchLabels": {"app": "x"}}, "targetPorts": [{"number": 8000}], "appProtocol": "grpc"},
            GROUP_V1,
            "spec.appProtocol",
        ),
        ({"selector": {}, "targetPortNumber": 8000}, GROUP_V1ALPHA2, "spec.selector"),
    ],
)
def test_pool_errors_name_the_field(spec: dict[str, Any], group: str, message: str) -> None:
    with pytest.raises(PoolSpecError, match=message.replace(".", r"\.")):
        pool_spec({"metadata": {"name": "p", "namespace": "n"}, "spec": spec}, group)


def test_unknown_group() -> None:
    with pytest.raises(PoolSpecError, match=r"inference\.networking\.k8s\.io or"):
        pool_spec(V1_POOL, "example.com")


def test_one_endpoint_per_target_port_named_by_rank_with_pod_labels() -> None:
    spec = pool_spec(V1_POOL, GROUP_V1)
    endpoints = pod_endpoints(pod(labels={"app": "vllm", "inference.networking.k8s.io/engine-type": "sglang"}), spec)
    assert [(e.name, e.address, e.port) for e in endpoints] == [
        ("vllm-0-rank-0", "10.0.0.7", 8000),
        ("vllm-0-rank-1", "10.0.0.7", 8002),
    ]
    assert endpoints[0].labels["inference.networking.k8s.io/engine-type"] == "sglang"


def test_active_ports_annotation_keeps_only_listed_ranks() -> None:
    spec = pool_spec(V1_POOL, GROUP_V1)
    annotated = pod(annotations={"inference.networking.k8s.io/active-ports": "8002, 9999"})
    assert active_ports(annotated) == frozenset({8002, 9999})
    assert [e.name for e in pod_endpoints(annotated, spec)] == ["vllm-0-rank-1"]
    assert active_ports(pod()) is None
    assert pod_endpoints(pod(annotations={"inference.networking.k8s.io/active-ports": ""}), spec) == []


@pytest.mark.parametrize(
    ("candidate", "ready"),
    [
        (pod(), True),
        (pod(ready=False), False),
        (pod(terminating=True), False),
        (pod(ip=""), False),
        ({"metadata": {"name": "x"}, "status": {"podIP": "1.2.3.4"}}, False),
    ],
)
def test_ready_means_ready_condition_an_ip_and_not_terminating(candidate: dict[str, Any], ready: bool) -> None:
    assert pod_is_ready(candidate) is ready
    assert bool(pod_endpoints(candidate, PoolSpec({"app": "vllm"}, (8000,)))) is ready


def test_selector_must_match_every_label() -> None:
    spec = PoolSpec({"app": "vllm", "tier": "gpu"}, (8000,))
    assert pod_endpoints(pod(labels={"app": "vllm"}), spec) == []
    assert len(pod_endpoints(pod(labels={"app": "vllm", "tier": "gpu", "extra": "1"}), spec)) == 1


def test_selector_flag() -> None:
    assert parse_selector_flag("app=vllm,tier=gpu") == {"app": "vllm", "tier": "gpu"}
    assert parse_selector_flag("app.kubernetes.io/name=vllm") == {"app.kubernetes.io/name": "vllm"}
    for bad in ("app", "app=vllm, tier=gpu", "app=a,app=b", "=x", "app=bad value"):
        with pytest.raises(PoolSpecError, match="--endpoint-selector"):
            parse_selector_flag(bad)
