"""The `flowControl` section: quantities, durations, bands, policy refs, and errors that name the path."""

from __future__ import annotations

import pytest

from epp.config.schema import ConfigError, load_config_text
from epp.flowcontrol.queue import BandSettings


def test_sections_parse_with_quantities_durations_and_policy_refs() -> None:
    config = load_config_text(
        """
featureGates: [flowControl]
plugins:
- {type: round-robin-fairness-policy, name: rr}
flowControl:
  maxBytes: 1Gi
  maxRequests: 2k
  defaultRequestTTL: 1m30s
  defaultPriorityBand: {maxRequests: 7, fairnessPolicyRef: rr}
  priorityBands:
  - {priority: 5, maxBytes: 500M, orderingPolicyRef: edf-ordering-policy}
""",
        "test",
    )
    settings = config.flow_control
    assert (settings.max_bytes, settings.max_requests, settings.default_ttl) == (2**30, 2000, 90.0)
    assert settings.default_band == BandSettings(0, 1_000_000_000, 7, "round-robin-fairness-policy")
    # a band inherits what it does not set from the default band
    assert settings.bands == (BandSettings(5, 500_000_000, 7, "round-robin-fairness-policy", "edf-ordering-policy"),)
    assert settings.band_for(-3) == BandSettings(-3, 1_000_000_000, 7, "round-robin-fairness-policy")
    assert config.describe()["flowControl"]["defaultRequestTTL"] == "90s"


def test_absent_section_means_unlimited_queue_without_ttl() -> None:
    settings = load_config_text("featureGates: [flowControl]\n", "test").flow_control
    assert (settings.max_bytes, settings.max_requests, settings.default_ttl, settings.bands) == (0, 0, 0.0, ())


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("maxBytes: -1", "flowControl.maxBytes: must not be negative"),
        ("maxRequests: many", "flowControl.maxRequests: expected a non-negative integer or quantity"),
        ("defaultRequestTTL: soon", "flowControl.defaultRequestTTL: expected a duration such as 30s"),
        ("queueing: yes", "flowControl.queueing: unknown field; valid fields: maxBytes"),
        (
            "usageLimitPolicyPluginRef: limit",
            "flowControl.usageLimitPolicyPluginRef: usage-limit policies are not built",
        ),
        ("priorityBands: [{maxBytes: 1}]", "flowControl.priorityBands[0].priority: expected an integer priority"),
        ("priorityBands: [{priority: 1}, {priority: 1}]", "priorityBands[1].priority: priority 1 has two bands"),
        (
            "priorityBands: [{priority: 1, fairnessPolicyRef: fifo}]",
            "'fifo' is neither a declared plugin of a policy type nor a policy type; use global-strict",
        ),
        (
            "priorityBands: [{priority: 1, orderingPolicyRef: round-robin-fairness-policy}]",
            "orderingPolicyRef: 'round-robin-fairness-policy' is neither",
        ),
    ],
)
def test_errors_name_the_path_and_what_is_valid(section: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config_text(f"featureGates: [flowControl]\nflowControl:\n  {section}\n", "test")
    assert any(message in error for error in raised.value.errors), raised.value.errors


def test_a_flow_control_section_without_the_gate_is_an_error() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config_text("flowControl:\n  maxRequests: 10\n", "test")
    assert raised.value.errors == [
        "test: flowControl: has no effect while the flowControl feature gate is off; add featureGates: [flowControl]"
    ]
