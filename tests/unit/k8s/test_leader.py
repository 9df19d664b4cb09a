"""Leader election on a Lease in kubesim: one leader, release on stop, takeover after expiry, conflicts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kubernetes_asyncio import client

from epp.k8s.leader import LeaderElector, lease_name
from kubesim.server import KubeSim

NAME = lease_name("default", "pool")


def elector(api: client.ApiClient, identity: str, changes: list[tuple[str, bool]] | None = None) -> LeaderElector:
    def record(leader: bool) -> None:
        if changes is not None:
            changes.append((identity, leader))

    return LeaderElector(api, "default", NAME, identity, 1.0, 0.6, 0.05, on_change=record)


async def until(check: Callable[[], bool], timeout: float = 5.0) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)
    return loop.time() - started


def test_lease_name_follows_the_reference() -> None:
    assert NAME == "epp-default-pool.gateway-api-inference-extension.sigs.k8s.io"


async def test_one_leader_release_on_stop_and_takeover_after_expiry(sim: KubeSim, api: client.ApiClient) -> None:
    changes: list[tuple[str, bool]] = []
    first, second = elector(api, "a", changes), elector(api, "b", changes)
    first.start()
    await until(lambda: first.is_leader)
    second.start()
    await asyncio.sleep(0.3)
    assert not second.is_leader, "the lease is held and renewed: the second candidate waits"
    lease = await client.CoordinationV1Api(api).read_namespaced_lease(NAME, "default")
    assert lease.spec.holder_identity == "a" and lease.spec.lease_duration_seconds == 1

    await first.stop()  # releases: the other takes over at its next try, not after the lease duration
    assert await until(lambda: second.is_leader) < 0.5
    assert changes == [("a", True), ("a", False), ("b", True)]

    third = elector(api, "c")
    third.start()
    assert second._task is not None
    second._task.cancel()  # dies without releasing
    waited = await until(lambda: third.is_leader)
    assert 0.8 <= waited <= 2.0, waited  # about one lease duration
    lease = await client.CoordinationV1Api(api).read_namespaced_lease(NAME, "default")
    assert lease.spec.holder_identity == "c" and lease.spec.lease_transitions == 1
    await third.stop()


async def test_racing_candidates_get_one_winner(sim: KubeSim, api: client.ApiClient) -> None:
    candidates = [elector(api, f"c{i}") for i in range(4)]
    results = await asyncio.gather(*(c.try_acquire_or_renew(0.0) for c in candidates))
    assert sum(results) == 1  # creates race: one 201, the rest 409 AlreadyExists
    results = await asyncio.gather(*(c.try_acquire_or_renew(10.0) for c in candidates))
    assert sum(results) == 1, "replaces race on the resourceVersion: one 200, the rest 409 Conflict"


async def test_leader_steps_down_when_it_cannot_renew(sim: KubeSim, api: client.ApiClient) -> None:
    leader = elector(api, "a")
    leader.start()
    await until(lambda: leader.is_leader)
    sim.token = "locked-out"
    waited = await until(lambda: not leader.is_leader)
    assert waited <= 1.0  # renew deadline 0.6 s
    sim.token = None
    await until(lambda: leader.is_leader)
    await leader.stop()
