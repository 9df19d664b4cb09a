"""Which models each endpoint serves, read from its OpenAI-compatible `GET /v1/models` (the base model and
the LoRA adapters it has loaded; vLLM, SGLang and the simulators all answer it on the serving port).

An endpoint is probed when it joins the table and every `refresh_s` after; a failed probe is retried
with backoff and leaves the endpoint "unknown". The index maps a model to the slots known to serve it,
rebuilt only when membership or a probe result changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

import aiohttp
import numpy as np

from epp.datastore.table import Endpoint, EndpointTable, SlotArray
from epp.tasks import spawn

log = logging.getLogger("epp.k8s")


def models_of(document: object) -> frozenset[str]:
    """Model ids of a `/v1/models` answer ({"data": [{"id": ...}, ...]})."""
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise ValueError("not an OpenAI model list (expected {'data': [{'id': ...}]})")
    return frozenset(str(m["id"]) for m in document["data"] if isinstance(m, dict) and "id" in m)


class ServedModels:
    def __init__(
        self, table: EndpointTable, scheme: str = "http", refresh_s: float = 30.0, timeout_s: float = 2.0
    ) -> None:
        self.table = table
        self.scheme = scheme
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        #: hostport → models it serves (absent = not known yet)
        self.models: dict[str, frozenset[str]] = {}
        #: bumps whenever `models` changes
        self.generation = 0
        self._pending: dict[str, float] = {}  # hostport → retry delay
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._index: tuple[int, int, dict[str, SlotArray], bool] = (-1, -1, {}, False)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.table.subscribe(self._on_table)
        for _, endpoint in self.table.items():
            self._pending[endpoint.hostport] = 0.0
        self._task = spawn(self._run(), "served-models", self._loop)

    async def stop(self) -> None:
        self.table.unsubscribe(self._on_table)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _on_table(self, kind: str, slot: int, endpoint: Endpoint) -> None:
        loop = self._loop
        if loop is None:
            return
        loop.call_soon_threadsafe(self._membership, kind, endpoint.hostport)

    def _membership(self, kind: str, hostport: str) -> None:
        if kind == "remove":
            if self.table.slot_of_hostport(hostport) is None:
                self._pending.pop(hostport, None)
                if self.models.pop(hostport, None) is not None:
                    self.generation += 1
            return
        self._pending.setdefault(hostport, 0.0)
        self._wake.set()

    # --- probing --------------------------------------------------------------------------------

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
            loop = asyncio.get_running_loop()
            next_refresh = loop.time() + self.refresh_s
            while True:
                due = dict(self._pending)
                self._pending.clear()
                self._wake.clear()
                if due:
                    await asyncio.gather(*(self._probe(session, hp, delay) for hp, delay in due.items()))
                if loop.time() >= next_refresh:
                    next_refresh = loop.time() + self.refresh_s
                    for _, endpoint in self.table.items():
                        self._pending.setdefault(endpoint.hostport, 0.0)
                    continue
                retry = min(self._pending.values(), default=None)
                wait = next_refresh - loop.time() if retry is None else min(retry, next_refresh - loop.time())
                # Not asyncio.wait_for: in Python 3.11 it returns normally when the event is set in the same
                # loop turn as the task is cancelled, and the cancellation is lost.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(wait, 0.0)):
                        await self._wake.wait()

    async def _probe(self, session: aiohttp.ClientSession, hostport: str, delay: float) -> None:
        if self.table.slot_of_hostport(hostport) is None:
            return
        try:
            async with session.get(f"{self.scheme}://{hostport}/v1/models") as response:
                response.raise_for_status()
                models = models_of(await response.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            retry = min(max(delay * 2, 0.5), 30.0)
            if self.table.slot_of_hostport(hostport) is not None:
                self._pending[hostport] = retry
            log.debug("GET /v1/models of %s failed (%s); retrying in %.1fs", hostport, exc, retry)
            return
        if self.table.slot_of_hostport(hostport) is None:
            return
        if self.models.get(hostport) != models:
            self.models[hostport] = models
            self.generation += 1
            log.info("endpoint %s serves %s", hostport, ", ".join(sorted(models)) or "no models")

    # --- index ----------------------------------------------------------------------------------

    def set_known(self, known: Iterable[tuple[str, frozenset[str]]]) -> None:
        """Record served models directly (tests, or callers that learn them elsewhere)."""
        for hostport, models in known:
            self.models[hostport] = models
        self.generation += 1

    def _current(self) -> tuple[dict[str, SlotArray], bool]:
        table_generation, generation, index, known = self._index
        if table_generation != self.table.generation or generation != self.generation:
            collected: dict[str, list[int]] = {}
            known = False
            for slot, endpoint in self.table.items():
                models = self.models.get(endpoint.hostport)
                if models is not None:
                    known = True
                    for name in models:
                        collected.setdefault(name, []).append(slot)
            index = {name: np.array(slots, dtype=np.intp) for name, slots in collected.items()}
            self._index = (self.table.generation, self.generation, index, known)
        return index, known

    def slots_serving(self, model: str) -> SlotArray | None:
        """Slots known to serve `model`; None when no present endpoint is known to serve it."""
        return self._current()[0].get(model)

    def any_known(self) -> bool:
        """True when at least one present endpoint's models are known."""
        return self._current()[1]
