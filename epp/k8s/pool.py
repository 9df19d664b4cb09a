"""The pool as the EPP needs it, from an InferencePool (v1 or v1alpha2) or from flags, and the pure
mapping from a pod to its endpoints (reference §6.1, §6.4).

- v1 (`inference.networking.k8s.io`): `spec.selector.matchLabels`, `spec.targetPorts[].number` (1 to 8),
  `spec.appProtocol`.
- v1alpha2 (`inference.networking.x-k8s.io`): `spec.selector` (a plain map), `spec.targetPortNumber`.
- A pod yields endpoints only when it has a podIP, no deletionTimestamp and condition Ready=True;
  one endpoint per target port, named `<pod>-rank-<i>`; the annotation
  `inference.networking.k8s.io/active-ports: "8000,8002"` keeps only the ranks whose port it lists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.datastore.table import Endpoint

GROUP_V1 = "inference.networking.k8s.io"
GROUP_V1ALPHA2 = "inference.networking.x-k8s.io"
#: pool API group → the version the EPP reads
POOL_VERSIONS = {GROUP_V1: "v1", GROUP_V1ALPHA2: "v1alpha2"}
ACTIVE_PORTS_ANNOTATION = "inference.networking.k8s.io/active-ports"
MAX_TARGET_PORTS = 8
APP_PROTOCOLS = ("http", "kubernetes.io/h2c")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


class PoolSpecError(ValueError):
    pass


@dataclass(frozen=True)
class PoolSpec:
    """What discovery needs from a pool: which pods, which ports."""

    selector: Mapping[str, str]
    target_ports: tuple[int, ...]
    app_protocol: str = "http"
    #: scrape this port instead of the target port (deprecated --model-server-metrics-port; one target port only)
    metrics_port: int | None = None
    #: identity for logs and metrics: "<namespace>/<name>"
    name: str = ""
    labels_selector: str = field(init=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels_selector", ",".join(f"{k}={v}" for k, v in sorted(self.selector.items())))


def _ports(values: Any, where: str) -> tuple[int, ...]:
    ports: list[int] = []
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise PoolSpecError(f"{where}[{index}]: port {value!r} must be an integer from 1 to 65535")
        if value in ports:
            raise PoolSpecError(f"{where}[{index}]: port {value} is listed twice; target ports must be unique")
        ports.append(value)
    if not 1 <= len(ports) <= MAX_TARGET_PORTS:
        raise PoolSpecError(f"{where}: {len(ports)} target ports; a pool has 1 to {MAX_TARGET_PORTS}")
    return tuple(ports)


def _selector(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise PoolSpecError(f"{where}: expected a non-empty map of pod labels, e.g. {{app: vllm-llama3}}")
    selector = {}
    for key, label in value.items():
        if not isinstance(key, str) or not isinstance(label, str | int | float) or isinstance(label, bool):
            raise PoolSpecError(f"{where}.{key}: label values must be strings")
        selector[key] = str(label)
    return selector


def pool_spec(obj: Mapping[str, Any], group: str, metrics_port: int | None = None) -> PoolSpec:
    """Read an InferencePool object of the given API group; raises PoolSpecError naming the field."""
    metadata = obj.get("metadata") or {}
    name = f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise PoolSpecError(f"InferencePool {name}: spec is missing")
    where = f"InferencePool {name} ({group})"
    if group == GROUP_V1:
        raw_selector = spec.get("selector")
        match_labels = raw_selector.get("matchLabels") if isinstance(raw_selector, dict) else None
        selector = _selector(match_labels, f"{where}: spec.selector.matchLabels")
        raw_ports = spec.get("targetPorts")
        if not isinstance(raw_ports, list):
            raise PoolSpecError(f"{where}: spec.targetPorts must be a list such as [{{number: 8000}}]")
        numbers = [p.get("number") if isinstance(p, dict) else p for p in raw_ports]
        ports = _ports(numbers, f"{where}: spec.targetPorts")
        protocol = str(spec.get("appProtocol") or "http")
        if protocol not in APP_PROTOCOLS:
            raise PoolSpecError(f"{where}: spec.appProtocol {protocol!r}; use {' or '.join(APP_PROTOCOLS)}")
    elif group == GROUP_V1ALPHA2:
        selector = _selector(spec.get("selector"), f"{where}: spec.selector")
        ports = _ports([spec.get("targetPortNumber")], f"{where}: spec.targetPortNumber")
        protocol = "http"
    else:
        raise PoolSpecError(f"unknown InferencePool group {group!r}; use {GROUP_V1} or {GROUP_V1ALPHA2}")
    return PoolSpec(selector, ports, protocol, metrics_port if len(ports) == 1 else None, name)


def parse_selector_flag(text: str) -> dict[str, str]:
    """`--endpoint-selector app=vllm,tier=gpu` → {"app": "vllm", "tier": "gpu"}."""
    selector: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key or any(c.isspace() for c in part):
            raise PoolSpecError(
                f"--endpoint-selector {text!r}: {part!r} is not key=value; use k=v pairs joined by commas, no spaces"
            )
        if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value) or len(value) > 63:
            raise PoolSpecError(f"--endpoint-selector {text!r}: {part!r} is not a valid label key=value")
        if key in selector:
            raise PoolSpecError(f"--endpoint-selector {text!r}: label {key!r} is given twice")
        selector[key] = value
    return selector


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def pod_is_ready(pod: Mapping[str, Any]) -> bool:
    """Ready = not terminating, has an IP, condition Ready is True."""
    metadata = pod.get("metadata") or {}
    if metadata.get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if not status.get("podIP"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def active_ports(pod: Mapping[str, Any]) -> frozenset[int] | None:
    """Ports named by the active-ports annotation; None when the pod has no such annotation."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(ACTIVE_PORTS_ANNOTATION)
    if raw is None:
        return None
    ports = set()
    for part in str(raw).split(","):
        part = part.strip()
        if part.isdigit():
            ports.add(int(part))
    return frozenset(ports)


def pod_endpoints(pod: Mapping[str, Any], pool: PoolSpec) -> list[Endpoint]:
    """The endpoints a pod contributes to the pool right now (empty when it is not ready or not selected)."""
    metadata = pod.get("metadata") or {}
    labels = {str(k): str(v) for k, v in (metadata.get("labels") or {}).items()}
    if not selector_matches(pool.selector, labels) or not pod_is_ready(pod):
        return []
    address = str((pod.get("status") or {}).get("podIP"))
    allowed = active_ports(pod)
    name = str(metadata.get("name", ""))
    return [
        Endpoint(address=address, port=port, name=f"{name}-rank-{rank}", labels=labels, metrics_port=pool.metrics_port)
        for rank, port in enumerate(pool.target_ports)
        if allowed is None or port in allowed
    ]
