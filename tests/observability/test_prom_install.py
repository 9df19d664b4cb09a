"""Without root, a missing Prometheus skips its tests with the install command instead of failing the suite."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.observability import prom


def test_a_user_who_cannot_install_prometheus_is_told_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(prom.shutil, "which", lambda name: None if name != "apt-get" else real_which("sh"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(prom.PrometheusNotInstallable, match="apt-get install -y --no-install-recommends prometheus"):
        prom.ensure_installed()
