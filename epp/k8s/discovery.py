"""Kubernetes discovery: the pool (InferencePool, or a label selector), its pods as table endpoints, and the
objects that steer model routing (InferenceObjective, InferenceModelRewrite, v1alpha2 InferenceModel).

Each kind is a Reflector (list + watch). The pod watch is filtered by the pool's selector; a selector
change restarts it (a full resync: the new list replaces the endpoint set), a target-port change
recomputes every pod's endpoints from the cache. The pool being deleted clears the table. The optional
kinds are watched only when the API serves them (checked through API discovery at startup).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from epp.datastore.table import Endpoint, EndpointTable
from epp.k8s.pool import (
    GROUP_V1,
    GROUP_V1ALPHA2,
    POOL_VERSIONS,
    PoolSpec,
    PoolSpecError,
    pod_endpoints,
    pool_spec,
)
from epp.k8s.rewrites import (
    PoolRef,
    RewriteSpecError,
    Rule,
    inference_model,
    objective_priority,
    refers_to_pool,
    rewrite_rules,
)
from epp.k8s.routing import ModelRouting
from epp.k8s.watch import Object, ObjectKey, Reflector
from epp.tasks import spawn

log = logging.getLogger("epp.k8s")
OBJECTIVES_GROUP = GROUP_V1ALPHA2
OBJECTIVES_VERSION = "v1alpha2"


class DiscoveryError(Exception):
    pass


@dataclass(frozen=True)
class DiscoveryOptions:
    namespace: str
    #: InferencePool name; "" in selector mode
    pool_name: str = ""
    pool_group: str = GROUP_V1
    #: selector mode (--endpoint-selector / --endpoint-target-ports): the pool without the CRD
    selector: dict[str, str] | None = None
    target_ports: tuple[int, ...] = ()
    metrics_port: int | None = None
    watch_timeout_s: int = 300


class _Calls:
    """Adapter so a Reflector can call a listener's methods that are swapped at run time."""

    def __init__(
        self,
        replace: Callable[[dict[ObjectKey, Object]], None],
        upsert: Callable[[Object], None],
        delete: Callable[[Object], None],
    ) -> None:
        self.on_replace, self.on_upsert, self.on_delete = replace, upsert, delete


def _rebuild(fn: Callable[[], None]) -> _Calls:
    return _Calls(lambda _objects: fn(), lambda _obj: fn(), lambda _obj: fn())


class PodEndpoints:
    """Pods of the pool → endpoints in the table (incremental per pod, whole on a resync)."""

    def __init__(self, table: EndpointTable, pool: PoolSpec, on_synced: Callable[[], None]) -> None:
        self.table = table
        self.pool = pool
        self._on_synced = on_synced
        self.by_pod: dict[ObjectKey, list[str]] = {}

    def on_replace(self, pods: dict[ObjectKey, Object]) -> None:
        wanted: list[Endpoint] = []
        self.by_pod = {}
        for key, pod in pods.items():
            endpoints = pod_endpoints(pod, self.pool)
            self.by_pod[key] = [e.key for e in endpoints]
            wanted.extend(endpoints)
        self.table.replace_all(wanted)
        log.info("pool %s: %d endpoints from %d pods", self.pool.name, len(wanted), len(pods))
        self._on_synced()

    def on_upsert(self, pod: Object) -> None:
        key = _key(pod)
        endpoints = pod_endpoints(pod, self.pool)
        keys = [e.key for e in endpoints]
        for old in self.by_pod.get(key, ()):
            if old not in keys:
                self.table.remove(old)
                log.debug("endpoint %s removed", old)
        for endpoint in endpoints:
            self.table.add(endpoint)
        if keys:
            self.by_pod[key] = keys
        else:
            self.by_pod.pop(key, None)

    def on_delete(self, pod: Object) -> None:
        for old in self.by_pod.pop(_key(pod), ()):
            self.table.remove(old)


def _key(obj: Object) -> ObjectKey:
    metadata = obj.get("metadata") or {}
    return (str(metadata.get("namespace", "")), str(metadata.get("name", "")))


class KubernetesDiscovery:
    def __init__(
        self,
        api: client.ApiClient,
        options: DiscoveryOptions,
        table: EndpointTable,
        routing: ModelRouting | None = None,
        on_objectives: Callable[[dict[str, int]], None] | None = None,
        on_synced: Callable[[bool], None] | None = None,
    ) -> None:
        self.api = api
        self.options = options
        self.table = table
        self.routing = routing
        self.on_objectives = on_objectives
        self.on_synced = on_synced
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.pool: PoolSpec | None = None
        self.pool_reflector: Reflector | None = None
        self.pods: PodEndpoints | None = None
        self.pod_reflector: Reflector | None = None
        self.objectives: Reflector | None = None
        self.rewrites: Reflector | None = None
        self.inference_models: Reflector | None = None
        self._reported: set[str] = set()

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        opts = self.options
        if opts.selector is not None:
            self._set_pool(PoolSpec(opts.selector, opts.target_ports, metrics_port=_single(opts), name="selector"))
            return
        group = opts.pool_group
        version = POOL_VERSIONS[group]
        served = await self._served(group, version)
        if "inferencepools" not in served:
            raise DiscoveryError(
                f"the API server does not serve inferencepools.{group}/{version}: install the InferencePool CRD "
                f"(deploy/crds/{group}_inferencepools.yaml), or pass the --pool-group of the pool you run"
            )
        pool_list = functools.partial(
            self.custom.list_namespaced_custom_object, group, version, opts.namespace, "inferencepools"
        )
        self.pool_reflector = Reflector(
            f"InferencePool {opts.namespace}/{opts.pool_name} ({group})",
            pool_list,
            _Calls(self._pool_replaced, self._pool_changed, lambda _obj: self._pool_gone()),
            field_selector=f"metadata.name={opts.pool_name}",
            watch_timeout_s=opts.watch_timeout_s,
        )
        self.pool_reflector.start()
        optional = await self._served(OBJECTIVES_GROUP, OBJECTIVES_VERSION)
        self.objectives = self._optional(optional, "inferenceobjectives", self._rebuild_objectives)
        self.rewrites = self._optional(optional, "inferencemodelrewrites", self._rebuild_routing)
        self.inference_models = self._optional(optional, "inferencemodels", self._rebuild_routing)

    async def stop(self) -> None:
        for reflector in (
            self.pool_reflector,
            self.pod_reflector,
            self.objectives,
            self.rewrites,
            self.inference_models,
        ):
            if reflector is not None:
                await reflector.stop()

    def reflectors(self) -> list[Reflector]:
        kinds = (self.pool_reflector, self.pod_reflector, self.objectives, self.rewrites, self.inference_models)
        return [r for r in kinds if r is not None]

    async def _served(self, group: str, version: str) -> set[str]:
        try:
            resources = await self.custom.get_api_resources(group, version, _request_timeout=10)
        except ApiException as exc:
            if exc.status == 404:
                return set()
            raise DiscoveryError(f"API discovery of {group}/{version} failed: HTTP {exc.status} {exc.reason}") from None
        except (OSError, TimeoutError) as exc:
            host = self.api.configuration.host
            raise DiscoveryError(f"cannot reach the Kubernetes API at {host}: {exc}") from None
        return {str(r.name) for r in resources.resources or []}

    def _optional(self, served: set[str], plural: str, rebuild: Callable[[], None]) -> Reflector | None:
        if plural not in served:
            log.info("%s.%s/%s not served by the API: not watched", plural, OBJECTIVES_GROUP, OBJECTIVES_VERSION)
            return None
        call = functools.partial(
            self.custom.list_namespaced_custom_object,
            OBJECTIVES_GROUP,
            OBJECTIVES_VERSION,
            self.options.namespace,
            plural,
        )
        reflector = Reflector(
            f"{plural} in {self.options.namespace}",
            call,
            _rebuild(rebuild),
            watch_timeout_s=self.options.watch_timeout_s,
        )
        reflector.start()
        return reflector

    # --- the pool -------------------------------------------------------------------------------

    def _pool_replaced(self, objects: dict[ObjectKey, Object]) -> None:
        pool = next(iter(objects.values()), None)
        if pool is None:
            self._pool_gone()
        else:
            self._pool_changed(pool)

    def _pool_changed(self, obj: Object) -> None:
        try:
            spec = pool_spec(obj, self.options.pool_group, self.options.metrics_port)
        except PoolSpecError as exc:
            self._report(
                str(exc), "keeping the previous pool settings" if self.pool else "no endpoints until it is fixed"
            )
            return
        self._set_pool(spec)

    def _set_pool(self, spec: PoolSpec) -> None:
        previous = self.pool
        self.pool = spec
        if previous is not None and previous.selector == spec.selector and self.pods is not None:
            if previous != spec:
                log.info("pool %s: target ports now %s; recomputing endpoints", spec.name, list(spec.target_ports))
                self.pods.pool = spec
                if self.pod_reflector is not None and self.pod_reflector.synced.is_set():
                    self.pods.on_replace(dict(self.pod_reflector.objects))
            return
        if previous is not None:
            log.info("pool %s: selector now %s; resyncing pods", spec.name, spec.labels_selector)
        old = self.pod_reflector
        self.pods = PodEndpoints(self.table, spec, lambda: self._synced(True))
        call = functools.partial(self.core.list_namespaced_pod, self.options.namespace)
        self.pod_reflector = Reflector(
            f"pods {self.options.namespace} [{spec.labels_selector}]",
            call,
            self.pods,
            label_selector=spec.labels_selector,
            watch_timeout_s=self.options.watch_timeout_s,
        )
        if old is not None:
            spawn(old.stop(), "pod-reflector-stop")
        self.pod_reflector.start()

    def _pool_gone(self) -> None:
        if self.pool is None and self.pod_reflector is None:
            log.warning("InferencePool %s/%s not found; waiting for it", self.options.namespace, self.options.pool_name)
            self._synced(False)
            return
        log.warning("InferencePool %s/%s deleted: endpoints cleared", self.options.namespace, self.options.pool_name)
        self.pool = None
        self.pods = None
        if self.pod_reflector is not None:
            spawn(self.pod_reflector.stop(), "pod-reflector-stop")
            self.pod_reflector = None
        self.table.replace_all([])
        self._synced(False)

    def _synced(self, synced: bool) -> None:
        if self.on_synced is not None:
            self.on_synced(synced)

    # --- objectives and routing -----------------------------------------------------------------

    def _pool_ref(self) -> PoolRef:
        return PoolRef(self.options.pool_name, self.options.pool_group)

    def _rebuild_objectives(self) -> None:
        if self.objectives is None or self.on_objectives is None:
            return
        priorities: dict[str, int] = {}
        for obj in self.objectives.objects.values():
            if not refers_to_pool(obj, self._pool_ref(), GROUP_V1):
                continue
            try:
                priorities[str(obj["metadata"]["name"])] = objective_priority(obj)
            except RewriteSpecError as exc:
                self._report(str(exc), "objective ignored")
        self.on_objectives(priorities)

    def _rebuild_routing(self) -> None:
        if self.routing is None:
            return
        rewrite_list: list[Rule] = []
        model_list: list[Rule] = []
        priorities: dict[str, int] = {}
        pool = self._pool_ref()
        for obj in self.rewrites.objects.values() if self.rewrites is not None else ():
            if refers_to_pool(obj, pool, GROUP_V1):
                try:
                    rewrite_list.extend(rewrite_rules(obj))
                except RewriteSpecError as exc:
                    self._report(str(exc), "rewrite ignored")
        models = self.inference_models.objects.values() if self.inference_models is not None else ()
        for obj in sorted(models, key=lambda o: _age(o)):
            if refers_to_pool(obj, pool, GROUP_V1ALPHA2):
                try:
                    model, priority, rule = inference_model(obj)
                except RewriteSpecError as exc:
                    self._report(str(exc), "InferenceModel ignored")
                    continue
                priorities.setdefault(model, priority)
                if rule is not None:
                    model_list.append(rule)
        self.routing.update(rewrite_list, model_list, priorities)

    def _report(self, message: str, consequence: str) -> None:
        if message not in self._reported:
            self._reported.add(message)
            log.error("%s; %s", message, consequence)


def _single(options: DiscoveryOptions) -> int | None:
    return options.metrics_port if len(options.target_ports) == 1 else None


def _age(obj: Object) -> tuple[str, str]:
    metadata: dict[str, Any] = obj.get("metadata") or {}
    return (str(metadata.get("creationTimestamp", "")), str(metadata.get("name", "")))
