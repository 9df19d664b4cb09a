"""The `flowControl` section of an EndpointPickerConfig → QueueSettings for epp.flowcontrol.

    flowControl:
      maxBytes: 10Gi            # global; 0 or absent = unlimited (Kubernetes quantities or integers)
      maxRequests: 5000
      defaultRequestTTL: 30s    # 0 = a request waits until its client goes away
      defaultPriorityBand: {maxBytes: 1Gi, fairnessPolicyRef: round-robin-fairness-policy}
      priorityBands:
      - {priority: 10, maxRequests: 100, orderingPolicyRef: edf-ordering-policy}

Policy refs name a plugin declared under `plugins` whose type is a fairness or ordering policy, or a
policy type directly (as the reference's defaulting does when it injects them).
"""

from __future__ import annotations

import re
from argparse import ArgumentTypeError
from collections.abc import Callable, Mapping
from typing import Any

from epp.flowcontrol.queue import FAIRNESS_POLICIES, ORDERING_POLICIES, BandSettings, QueueSettings
from epp.units import parse_duration

_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|K|M|G|T|P|E)?$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_GLOBAL_FIELDS = ("maxBytes", "maxRequests", "defaultRequestTTL", "defaultPriorityBand", "priorityBands",
                  "usageLimitPolicyPluginRef")  # fmt: skip
_BAND_FIELDS = ("priority", "maxBytes", "maxRequests", "fairnessPolicyRef", "orderingPolicyRef")

Error = Callable[[str, str], None]


def quantity(value: Any) -> int:
    """An integer or a Kubernetes resource.Quantity string (`10Gi`, `1k`, `500M`) → an integer."""
    if isinstance(value, bool):
        raise ValueError(f"expected a non-negative integer or quantity such as 10Gi, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative, got {value}")
        return value
    match = _QUANTITY.match(str(value).strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a non-negative integer or quantity such as 10Gi or 1k, got {value!r}")
    number, suffix = float(match.group(1)), match.group(2) or ""
    return int(number * (_BINARY.get(suffix) or _DECIMAL[suffix]))


def duration(value: Any) -> float:
    """A Go duration string (`30s`, `1m30s`, `500ms`) or a number of seconds → seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    try:
        return parse_duration(value) if isinstance(value, str) else _not_a_duration(value)
    except ArgumentTypeError:
        return _not_a_duration(value)


def _not_a_duration(value: Any) -> float:
    raise ValueError(f"expected a duration such as 30s, 500ms or 1m30s, got {value!r}")


def parse_flow_control(raw: Any, policy_types: Mapping[str, str], error: Error) -> QueueSettings | None:
    """`policy_types` maps declared plugin names to their types (to resolve policy refs)."""
    if raw is None:
        return QueueSettings()
    if not isinstance(raw, Mapping):
        error("flowControl", "expected a mapping (maxBytes, maxRequests, defaultRequestTTL, priorityBands, ...)")
        return None
    ok = True

    def fail(path: str, message: str) -> None:
        nonlocal ok
        ok = False
        error(path, message)

    for key in raw:
        if key not in _GLOBAL_FIELDS:
            fail(f"flowControl.{key}", f"unknown field; valid fields: {', '.join(_GLOBAL_FIELDS)}")
    if raw.get("usageLimitPolicyPluginRef") is not None:
        fail(
            "flowControl.usageLimitPolicyPluginRef",
            "usage-limit policies are not built; dispatch is gated by the saturation detector (threshold 1.0)",
        )
    max_bytes = _number(raw, "maxBytes", "flowControl", quantity, 0, fail)
    max_requests = _number(raw, "maxRequests", "flowControl", quantity, 0, fail)
    ttl = _number(raw, "defaultRequestTTL", "flowControl", duration, 0.0, fail)
    template = BandSettings(priority=0)
    raw_default = raw.get("defaultPriorityBand")
    if raw_default is not None:
        parsed = _band(raw_default, "flowControl.defaultPriorityBand", policy_types, fail, need_priority=False)
        if parsed is not None:
            template = parsed
    bands: list[BandSettings] = []
    raw_bands = raw.get("priorityBands") or []
    if not isinstance(raw_bands, list):
        fail("flowControl.priorityBands", "expected a list of {priority, maxBytes, maxRequests, ...}")
        raw_bands = []
    seen: set[int] = set()
    for i, raw_band in enumerate(raw_bands):
        path = f"flowControl.priorityBands[{i}]"
        band = _band(raw_band, path, policy_types, fail, need_priority=True, template=template)
        if band is None:
            continue
        if band.priority in seen:
            fail(f"{path}.priority", f"priority {band.priority} has two bands; give each priority one band")
        seen.add(band.priority)
        bands.append(band)
    if not ok:
        return None
    return QueueSettings(int(max_bytes), int(max_requests), float(ttl), tuple(bands), template)


def _number(
    raw: Mapping[str, Any], key: str, path: str, convert: Callable[[Any], Any], default: Any, fail: Error
) -> Any:
    if raw.get(key) is None:
        return default
    try:
        return convert(raw[key])
    except ValueError as exc:
        fail(f"{path}.{key}", str(exc))
        return default


def _band(
    raw: Any,
    path: str,
    policy_types: Mapping[str, str],
    fail: Error,
    need_priority: bool,
    template: BandSettings | None = None,
) -> BandSettings | None:
    if not isinstance(raw, Mapping):
        fail(path, "expected a mapping {priority, maxBytes, maxRequests, fairnessPolicyRef, orderingPolicyRef}")
        return None
    for key in raw:
        if key not in _BAND_FIELDS or (key == "priority" and not need_priority):
            valid = _BAND_FIELDS if need_priority else _BAND_FIELDS[1:]
            fail(f"{path}.{key}", f"unknown field; valid fields: {', '.join(valid)}")
    base = template or BandSettings(priority=0)
    priority = 0
    if need_priority:
        value = raw.get("priority")
        if isinstance(value, bool) or not isinstance(value, int):
            fail(f"{path}.priority", f"expected an integer priority (higher is served first), got {value!r}")
            return None
        priority = value
    max_bytes = _number(raw, "maxBytes", path, quantity, base.max_bytes, fail)
    max_requests = _number(raw, "maxRequests", path, quantity, base.max_requests, fail)
    fairness = _policy(raw.get("fairnessPolicyRef"), f"{path}.fairnessPolicyRef", FAIRNESS_POLICIES, policy_types, fail)
    ordering = _policy(raw.get("orderingPolicyRef"), f"{path}.orderingPolicyRef", ORDERING_POLICIES, policy_types, fail)
    return BandSettings(
        priority, int(max_bytes), int(max_requests), fairness or base.fairness, ordering or base.ordering
    )


def _policy(ref: Any, path: str, known: tuple[str, ...], policy_types: Mapping[str, str], fail: Error) -> str | None:
    if ref is None:
        return None
    kind = policy_types.get(ref, ref) if isinstance(ref, str) else None
    if kind not in known:
        fail(path, f"{ref!r} is neither a declared plugin of a policy type nor a policy type; use {' or '.join(known)}")
        return None
    return kind


def describe_flow_control(settings: QueueSettings) -> dict[str, Any]:
    def band(b: BandSettings, with_priority: bool = True) -> dict[str, Any]:
        described: dict[str, Any] = {"priority": b.priority} if with_priority else {}
        described.update(maxBytes=b.max_bytes, maxRequests=b.max_requests, fairnessPolicyRef=b.fairness,
                         orderingPolicyRef=b.ordering)  # fmt: skip
        return described

    return {
        "maxBytes": settings.max_bytes,
        "maxRequests": settings.max_requests,
        "defaultRequestTTL": f"{settings.default_ttl:g}s",
        "defaultPriorityBand": band(settings.default_band, with_priority=False),
        "priorityBands": [band(b) for b in settings.bands],
    }
