from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config

from kubesim.kubeconfig import write_kubeconfig
from kubesim.server import KubeSim


@pytest.fixture
async def sim() -> AsyncIterator[KubeSim]:
    server = KubeSim(bookmark_interval=0.2)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def api(sim: KubeSim, tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    path = write_kubeconfig(sim, tmp_path / "kubeconfig")
    api_client = await config.new_client_from_config(config_file=str(path))
    yield api_client
    await api_client.close()
