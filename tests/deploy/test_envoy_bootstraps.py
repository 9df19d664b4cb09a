"""Every Envoy bootstrap in deploy/envoy/ closes ext_proc streams gracefully (see docs/operations.md, Memory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from epp.devstack.envoy import BOOTSTRAPS, GRACEFUL_CLOSE, render_bootstrap


@pytest.mark.parametrize("path", sorted(BOOTSTRAPS.glob("*.yaml")), ids=lambda p: p.name)
def test_bootstrap_turns_on_graceful_ext_proc_close(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    layers = config["layered_runtime"]["layers"]
    static = [layer["static_layer"] for layer in layers if "static_layer" in layer]
    assert any(layer.get(GRACEFUL_CLOSE) is True for layer in static), f"{path.name}: set {GRACEFUL_CLOSE}: true"


def test_there_are_bootstraps() -> None:
    assert len(list(BOOTSTRAPS.glob("*.yaml"))) >= 4


def _ext_proc_filters(config: dict[str, Any]) -> list[dict[str, Any]]:
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    kind = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
    return [f["typed_config"] for f in manager["http_filters"] if f["typed_config"]["@type"] == kind]


def test_envoy_yaml_routes_with_one_filter_and_observes_the_response_with_another() -> None:
    routing, observing = _ext_proc_filters(render_bootstrap("envoy", 1, 2, 3))
    assert routing["processing_mode"]["response_body_mode"] == "NONE" and routing["allow_mode_override"] is True
    assert routing["processing_mode"]["request_body_mode"] == "BUFFERED"
    assert observing["observability_mode"] is True
    assert observing["processing_mode"]["request_header_mode"] == "SEND"  # the token rides on the request headers
    assert observing["processing_mode"]["response_body_mode"] == "STREAMED"


@pytest.mark.parametrize("source", ["render", "file"])
def test_the_reference_layout_is_one_full_duplex_filter(source: str) -> None:
    if source == "render":
        mode = "FULL_DUPLEX_STREAMED"
        config = render_bootstrap("envoy", 1, 2, 3, request_body_mode=mode, response_body_mode=mode)
    else:
        config = yaml.safe_load((BOOTSTRAPS / "envoy-reference.yaml").read_text())
    (only,) = _ext_proc_filters(config)
    assert not only.get("observability_mode")
    expected = {"request_body_mode": "FULL_DUPLEX_STREAMED", "response_body_mode": "FULL_DUPLEX_STREAMED",
                "request_trailer_mode": "SEND", "response_trailer_mode": "SEND"}  # fmt: skip
    assert {k: only["processing_mode"][k] for k in expected} == expected
