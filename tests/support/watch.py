"""A recorder of what a Reflector reports, and a pods reflector over the test API server."""

from __future__ import annotations

import functools
from typing import Any

from kubernetes_asyncio import client

from epp.k8s.watch import Backoff, Object, ObjectKey, Reflector


class Recorder:
    def __init__(self) -> None:
        self.state: dict[str, Object] = {}
        self.log: list[tuple[str, str]] = []

    def on_replace(self, objects: dict[ObjectKey, Object]) -> None:
        gone = set(self.state) - {name for _, name in objects}
        self.log.extend(("gone", name) for name in sorted(gone))
        self.state = {name: obj for (_, name), obj in objects.items()}
        self.log.append(("replace", ",".join(sorted(self.state))))

    def on_upsert(self, obj: Object) -> None:
        self.state[obj["metadata"]["name"]] = obj
        self.log.append(("upsert", obj["metadata"]["name"]))

    def on_delete(self, obj: Object) -> None:
        self.state.pop(obj["metadata"]["name"], None)
        self.log.append(("delete", obj["metadata"]["name"]))


def pods_reflector(api: client.ApiClient, recorder: Recorder, **options: Any) -> Reflector:
    call = functools.partial(client.CoreV1Api(api).list_namespaced_pod, "default")
    return Reflector("pods", call, recorder, backoff=Backoff(initial=0.05, cap=0.2), **options)
