"""Leader election on a coordination.k8s.io/v1 Lease (reference §1.5), with client-go's rules:

- the lease `epp-<namespace>-<pool>.gateway-api-inference-extension.sigs.k8s.io` in the pool namespace;
- a candidate takes the lease when it does not exist, has no holder, or its record has not changed for
  `lease_duration` as measured on the candidate's own clock (no trust in other clocks); writes carry the
  resourceVersion read, so two candidates racing get one success and one 409 Conflict;
- the leader renews every `retry_period`; if it cannot renew for `renew_deadline` it steps down;
- on shutdown the leader releases the lease (holder cleared, duration 1 s) so a follower takes over at
  its next try instead of waiting out the lease (ReleaseOnCancel).

Followers keep running discovery and scraping (a warm table); only health follows leadership.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from epp.tasks import spawn

log = logging.getLogger("epp.k8s")
LEASE_SUFFIX = ".gateway-api-inference-extension.sigs.k8s.io"


def lease_name(namespace: str, pool: str) -> str:
    return f"epp-{namespace}-{pool}{LEASE_SUFFIX}"


def default_identity(pod_name: str = "") -> str:
    return f"{pod_name or socket.gethostname()}_{uuid.uuid4()}"


def _now() -> datetime:
    return datetime.now(UTC)


class LeaderElector:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        lease_duration_s: float = 15.0,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        if not lease_duration_s > renew_deadline_s > retry_period_s > 0:
            raise ValueError(
                f"leader election needs lease duration ({lease_duration_s}s) > renew deadline ({renew_deadline_s}s) "
                f"> retry period ({retry_period_s}s) > 0"
            )
        self.leases = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self.on_change = on_change
        self.is_leader = False
        self.transitions = 0
        self._observed: tuple[str, str, str] | None = None
        self._observed_at = 0.0
        self._last_renew = 0.0
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = spawn(self._run(), "leader-election")

    async def stop(self) -> None:
        """Stop campaigning and release the lease if held."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.is_leader:
            await self._release()
            self._set(False)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                held = await self.try_acquire_or_renew(started)
            except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("leader election: lease %s/%s: %s", self.namespace, self.name, _brief(exc))
                held = False
            if held:
                self._last_renew = started
                self._set(True)
            elif self.is_leader and started - self._last_renew >= self.renew_deadline_s:
                log.error("leader election: could not renew lease %s within %.1fs", self.name, self.renew_deadline_s)
                self._set(False)
            delay = self.retry_period_s if self.is_leader else self.retry_period_s * random.uniform(1.0, 1.2)
            await asyncio.sleep(delay)

    def _set(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        log.info("leader election: %s lease %s/%s", "acquired" if leader else "lost", self.namespace, self.name)
        if self.on_change is not None:
            self.on_change(leader)

    # --- one round --------------------------------------------------------------------------------

    async def try_acquire_or_renew(self, now: float) -> bool:
        """One attempt; True when this candidate holds the lease afterwards. `now` is loop.time()."""
        try:
            lease = await self.leases.read_namespaced_lease(self.name, self.namespace, _request_timeout=5)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return await self._create()
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity or ""
        record = (holder, str(spec.renew_time), str(lease.metadata.resource_version))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.lease_duration_seconds or self.lease_duration_s)
        if holder and holder != self.identity and now < self._observed_at + duration:
            return False
        stamp = _now()
        if holder != self.identity:
            spec.lease_transitions = (spec.lease_transitions or 0) + (1 if holder else 0)
            spec.acquire_time = stamp
        spec.holder_identity = self.identity
        spec.lease_duration_seconds = round(self.lease_duration_s)
        spec.renew_time = stamp
        lease.spec = spec
        try:
            updated = await self.leases.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=5)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        self._observed = (self.identity, str(updated.spec.renew_time), str(updated.metadata.resource_version))
        self._observed_at = now
        return True

    async def _create(self) -> bool:
        stamp = _now()
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=client.V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=round(self.lease_duration_s),
                acquire_time=stamp,
                renew_time=stamp,
                lease_transitions=0,
            ),
        )
        try:
            await self.leases.create_namespaced_lease(self.namespace, body, _request_timeout=5)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def _release(self) -> None:
        try:
            lease = await self.leases.read_namespaced_lease(self.name, self.namespace, _request_timeout=5)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            stamp = _now()
            lease.spec.holder_identity = ""
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = stamp
            lease.spec.acquire_time = stamp
            await self.leases.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=5)
            log.info("leader election: released lease %s/%s", self.namespace, self.name)
        except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("leader election: could not release lease %s: %s", self.name, _brief(exc))


def _brief(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
