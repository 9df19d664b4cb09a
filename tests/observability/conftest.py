from __future__ import annotations

import pytest

from tests.observability.prom import PrometheusMissing, PrometheusNotInstallable, ensure_installed


@pytest.fixture(scope="session")
def prometheus_binaries() -> tuple[str, str]:
    """(prometheus, promtool), installed from the Debian package when missing (CI machines start fresh)."""
    try:
        return ensure_installed()
    except PrometheusNotInstallable as exc:  # a user without root: skip, naming the command (never silently)
        pytest.skip(str(exc))
    except PrometheusMissing as exc:  # could install but the install failed: that is a failure
        pytest.fail(str(exc))
