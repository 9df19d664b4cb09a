"""Every Envoy bootstrap in deploy/envoy/ closes ext_proc streams gracefully (see docs/operations.md, Memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from epp.devstack.envoy import BOOTSTRAPS, GRACEFUL_CLOSE


@pytest.mark.parametrize("path", sorted(BOOTSTRAPS.glob("*.yaml")), ids=lambda p: p.name)
def test_bootstrap_turns_on_graceful_ext_proc_close(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    layers = config["layered_runtime"]["layers"]
    static = [layer["static_layer"] for layer in layers if "static_layer" in layer]
    assert any(layer.get(GRACEFUL_CLOSE) is True for layer in static), f"{path.name}: set {GRACEFUL_CLOSE}: true"


def test_there_are_bootstraps() -> None:
    assert len(list(BOOTSTRAPS.glob("*.yaml"))) >= 4
