from __future__ import annotations

from collections.abc import Iterator

import pytest

from epp.devstack.redis import RedisServer
from tests.replicas.store import started_store


@pytest.fixture
def store() -> Iterator[RedisServer]:
    yield from started_store()
