"""Kubernetes mode of the EPP process: client, discovery, model routing and leader election, wired to
the table, the director and health. Built by `epp.app` when --pool-name or --endpoint-selector is given."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from kubernetes_asyncio import client

from epp.datastore.table import EndpointTable
from epp.director import Director
from epp.health import HealthState
from epp.k8s.client import connect
from epp.k8s.discovery import DiscoveryOptions, KubernetesDiscovery
from epp.k8s.leader import LeaderElector, default_identity, lease_name
from epp.k8s.pool import parse_selector_flag
from epp.k8s.routing import ModelRouting
from epp.k8s.served import ServedModels
from epp.settings import Settings

log = logging.getLogger("epp.k8s")
_DEPLOYMENT_OF_POD = re.compile(r"^(.+)-[a-z0-9]+-[a-z0-9]+$")


def deployment_of(pod_name: str) -> str:
    """The Deployment a pod belongs to, from its name (`epp-7d9c8b6f4-x2x7z` → `epp`)."""
    match = _DEPLOYMENT_OF_POD.match(pod_name)
    return match.group(1) if match else pod_name


@dataclass
class KubernetesRuntime:
    api: client.ApiClient
    discovery: KubernetesDiscovery
    served: ServedModels | None
    routing: ModelRouting | None
    elector: LeaderElector | None

    async def release(self) -> None:
        """Stop campaigning and give the lease up (drain starts: a follower takes over)."""
        if self.elector is not None:
            await self.elector.stop()

    async def stop(self) -> None:
        await self.release()
        if self.served is not None:
            await self.served.stop()
        await self.discovery.stop()
        await self.api.close()


async def start_kubernetes(
    settings: Settings, table: EndpointTable, health: HealthState, director: Director, scheme: str = "http"
) -> KubernetesRuntime:
    """Connect and start watching; returns at once (health turns SERVING when the pool has synced).
    Raises KubeConfigError or DiscoveryError with a message for the user."""
    api, source = await connect()
    namespace = settings.pool_namespace
    log.info("Kubernetes API %s (%s), namespace %s", api.configuration.host, source, namespace)
    selector_mode = bool(settings.endpoint_selector)
    options = DiscoveryOptions(
        namespace=namespace,
        pool_name=settings.pool_name,
        pool_group=settings.pool_group,
        selector=parse_selector_flag(settings.endpoint_selector) if selector_mode else None,
        target_ports=tuple(settings.endpoint_target_ports),
        metrics_port=settings.model_server_metrics_port or None,
    )
    served: ServedModels | None = None
    routing: ModelRouting | None = None
    if not selector_mode:
        served = ServedModels(table, scheme=scheme)
        routing = ModelRouting(table, served, staleness_s=float(settings.metrics_staleness_threshold))
        director.models = routing
    director.namespace = namespace

    def set_objectives(priorities: dict[str, int]) -> None:
        director.objectives = priorities

    def set_synced(synced: bool) -> None:
        health.synced = synced

    discovery = KubernetesDiscovery(api, options, table, routing, set_objectives, set_synced)
    try:
        await discovery.start()
    except BaseException:
        await discovery.stop()
        await api.close()
        raise
    if served is not None:
        served.start()
    elector: LeaderElector | None = None
    if settings.ha_enable_leader_election:
        pod_name = os.environ.get("POD_NAME", "")
        pool = settings.pool_name or deployment_of(pod_name)
        health.leader_election = True

        def set_leader(leader: bool) -> None:
            health.leader = leader

        elector = LeaderElector(
            api,
            namespace,
            lease_name(namespace, pool),
            default_identity(pod_name),
            lease_duration_s=settings.ha_lease_duration,
            renew_deadline_s=settings.ha_renew_deadline,
            retry_period_s=settings.ha_retry_period,
            on_change=set_leader,
        )
        elector.start()
        log.info("leader election on lease %s/%s as %s", namespace, elector.name, elector.identity)
    return KubernetesRuntime(api, discovery, served, routing, elector)
