from __future__ import annotations

import pytest

from tests.observability.prom import PrometheusMissing, ensure_installed


@pytest.fixture(scope="session")
def prometheus_binaries() -> tuple[str, str]:
    """(prometheus, promtool), installed from the Debian package when missing (CI machines start fresh)."""
    try:
        return ensure_installed()
    except PrometheusMissing as exc:
        pytest.fail(str(exc))
