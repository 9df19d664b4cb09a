"""kubesim for synchronous tests: the server on its own event loop in a background thread, with a
thread-safe Python API (apply YAML, read, patch, delete, pod readiness, drop watches, compact)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from kubesim.kubeconfig import write_kubeconfig, write_service_account
from kubesim.manifests import apply_all, load_manifests
from kubesim.objects import Object
from kubesim.server import KubeSim

T = TypeVar("T")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
CALL_TIMEOUT_S = 10.0


def pod_manifest(
    name: str,
    ip: str,
    labels: Mapping[str, str],
    namespace: str = "default",
    ready: bool = True,
    annotations: Mapping[str, str] | None = None,
    ports: list[int] | None = None,
) -> Object:
    """A running pod as the kubelet reports it: phase Running, podIP, the Ready condition."""
    container: Object = {"name": "server", "image": "vllm-sim"}
    if ports:
        container["ports"] = [{"containerPort": p} for p in ports]
    metadata: Object = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [container]},
        "status": pod_status(ip, ready),
    }


def pod_status(ip: str, ready: bool) -> Object:
    flag = "True" if ready else "False"
    return {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [
            {"type": "Initialized", "status": "True"},
            {"type": "Ready", "status": flag},
            {"type": "ContainersReady", "status": flag},
            {"type": "PodScheduled", "status": "True"},
        ],
    }


#: the token grant_metrics_reader registers by default, and the Authorization header that carries it
METRICS_TOKEN = "kubesim-metrics-reader-token"
METRICS_AUTH = f"Bearer {METRICS_TOKEN}"
METRICS_READER_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: epp-metrics-reader}}
rules:
- nonResourceURLs: ["/metrics", "/debug", "/debug/*"]
  verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: epp-metrics-reader-{name}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: epp-metrics-reader}}
subjects:
- {{kind: ServiceAccount, name: {name}, namespace: {namespace}}}
"""


class KubeSimThread:
    """`with KubeSimThread() as kube: kube.apply(yaml_text); kube.write_kubeconfig(path)`."""

    def __init__(self, **options: Any) -> None:
        self.sim = KubeSim(**options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.sim.url

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.sim.start())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.sim.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="kubesim", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise TimeoutError("kubesim did not start within 10 s")
        if failure:
            raise failure[0]

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> KubeSimThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` on kubesim's loop (where the store lives) and return its result."""
        assert self._loop is not None, "kubesim is not started"

        async def invoke() -> T:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(CALL_TIMEOUT_S)

    # --- the Python API -----------------------------------------------------------------------

    def apply(self, manifests: str | Object | list[Object], namespace: str = "") -> list[Object]:
        """Create or replace objects (a YAML text, one object or a list); status goes through /status."""
        if isinstance(manifests, str):
            objects = load_manifests(manifests)
        elif isinstance(manifests, dict):
            objects = [manifests]
        else:
            objects = manifests
        return self.call(apply_all, self.sim.store, objects, namespace)

    def get(self, api_version: str, kind: str, name: str, namespace: str = "default") -> Object:
        store = self.sim.store
        return self.call(lambda: store.get(store.type_of(api_version, kind), namespace, name))

    def list(self, api_version: str, kind: str, namespace: str | None = "default", labels: str = "") -> list[Object]:
        store = self.sim.store
        return self.call(lambda: store.list(store.type_of(api_version, kind), namespace, labels)[0])

    def patch(
        self, api_version: str, kind: str, name: str, patch: Object, namespace: str = "default", status: bool = False
    ) -> Object:
        """JSON merge patch of an object (or of its status subresource)."""
        store = self.sim.store
        return self.call(
            lambda: store.patch(
                store.type_of(api_version, kind),
                namespace,
                name,
                "application/merge-patch+json",
                patch,
                "status" if status else "",
            )
        )

    def delete(self, api_version: str, kind: str, name: str, namespace: str = "default", grace: int = 0) -> Object:
        store = self.sim.store
        return self.call(lambda: store.delete(store.type_of(api_version, kind), namespace, name, grace))

    def set_pod_ready(self, name: str, ready: bool, namespace: str = "default") -> Object:
        pod = self.get("v1", "Pod", name, namespace)
        ip = (pod.get("status") or {}).get("podIP", "")
        return self.patch("v1", "Pod", name, {"status": pod_status(ip, ready)}, namespace, status=True)

    def drop_watches(self, abrupt: bool = False) -> int:
        """End every open watch stream (abrupt: cut the TCP connection); returns how many were open."""
        return self.call(self.sim.store.drop_watches, abrupt)

    def compact(self) -> None:
        """Forget the event history: a client resuming from an older resourceVersion gets 410 Gone."""
        self.call(self.sim.store.compact)

    def open_watches(self) -> int:
        return self.call(lambda: len(self.sim.store.watches))

    def add_user(self, token: str, username: str, groups: tuple[str, ...] = ()) -> None:
        """TokenReview authenticates `token` as `username` (see KubeSim.add_user)."""
        self.call(self.sim.add_user, token, username, groups)

    def grant_metrics_reader(
        self, token: str = METRICS_TOKEN, namespace: str = "monitoring", name: str = "prometheus"
    ) -> str:
        """A scraper as a cluster has one: service account NAMESPACE/NAME whose token is `token`, bound to a
        ClusterRole that may get /metrics and the /debug pages. Returns the Authorization header value."""
        self.add_user(token, f"system:serviceaccount:{namespace}:{name}", ("system:serviceaccounts",))
        self.apply(METRICS_READER_RBAC.format(namespace=namespace, name=name))
        return f"Bearer {token}"

    def write_kubeconfig(self, path: str | Path, namespace: str = "default", token: str | None = None) -> Path:
        """A kubeconfig for this server; with `token` (see service_account_token) the client is that user and
        RBAC decides what it may do."""
        return write_kubeconfig(self.sim, path, namespace, token)

    def service_account_token(self, namespace: str, account: str) -> str:
        """A token that authenticates as ServiceAccount NAMESPACE/ACCOUNT (see KubeSim.service_account_token)."""
        return self.call(self.sim.service_account_token, namespace, account)

    def fill_service_account_token(self, namespace: str, secret_name: str) -> str:
        """The token controller's work on one token Secret (see KubeSim.fill_service_account_token)."""
        return self.call(self.sim.fill_service_account_token, namespace, secret_name)

    def write_service_account(self, directory: str | Path, namespace: str = "default") -> dict[str, str]:
        return write_service_account(self.sim, directory, namespace)


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.02, what: str = "condition") -> T:
    """Poll until `predicate()` is truthy; returns its value, or raises TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s (last value {value!r})")
        time.sleep(interval)


def prometheus_samples(url: str, name: str, authorization: str = "") -> list[tuple[dict[str, str], float]]:
    """Samples of one metric on a Prometheus text page: [(labels, value), ...]; `authorization` is sent as
    the Authorization header when given."""
    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with _OPENER.open(request, timeout=5) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"GET {url}: HTTP {error.code}: {error.read().decode(errors='replace')[:2000]}") from None
    samples = []
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in ("{", " "):
            continue
        head, _, value = line.rpartition(" ")
        labels = dict(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', head))
        samples.append((labels, float(value)))
    return samples
