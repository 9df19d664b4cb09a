"""The object store behind kubesim: objects per resource type, one global resourceVersion, an event
history per type for watches that resume from a resourceVersion, and the watches themselves.

Semantics follow the Kubernetes API server where a client can tell the difference:
- every write bumps the one cluster-wide resourceVersion; list responses carry it; a watch from
  resourceVersion N replays what happened after N, or fails with 410 Expired when N is older than the
  retained history (`compact()` drops the history, as etcd compaction does);
- a watch without a resourceVersion (or "0") starts with synthetic ADDED events for what exists;
- a filtered watch turns a MODIFIED into ADDED / DELETED when the object starts / stops matching;
- PUT with a stale metadata.resourceVersion is a 409 Conflict; create of an existing name is 409 too;
- types with a status subresource keep status on main-resource writes and spec on status writes;
  a spec change bumps metadata.generation;
- DELETE of a pod (default 30 s) or with gracePeriodSeconds > 0 first sets deletionTimestamp, then
  removes the object when the grace period ends.

All methods must be called on the event loop that serves the store (watch queues are asyncio queues).
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import copy
import json
import uuid
from collections import deque
from collections.abc import Iterable
from typing import Any

from kubesim.objects import ApiError, Event, Object, Watch, not_found, now_rfc3339
from kubesim.patch import PatchError, apply_patch
from kubesim.resources import CORE_TYPES, INFERENCE_TYPES, ResourceType, types_from_crd
from kubesim.selectors import SelectorError, field_matcher, label_matcher

ObjectKey = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
DEFAULT_HISTORY = 10_000
FIRST_RESOURCE_VERSION = 1000


class Store:
    def __init__(self, inference_crds: bool = True, history: int = DEFAULT_HISTORY) -> None:
        self.rv = FIRST_RESOURCE_VERSION
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        self.objects: dict[tuple[str, str, str], dict[ObjectKey, Object]] = {}
        self.history: dict[tuple[str, str, str], deque[Event]] = {}
        #: per type: the oldest resourceVersion a watch may resume from
        self.floor: dict[tuple[str, str, str], int] = {}
        self.watches: set[Watch] = set()
        self.history_limit = history
        for rtype in CORE_TYPES + (INFERENCE_TYPES if inference_crds else ()):
            self.register(rtype)
        for name in ("default", "kube-system"):
            self.create(self.type_of("v1", "Namespace"), "", {"metadata": {"name": name}})

    # --- types --------------------------------------------------------------------------------

    def register(self, rtype: ResourceType) -> None:
        if rtype.key in self.types:
            self.types[rtype.key] = rtype
            return
        self.types[rtype.key] = rtype
        self.objects[rtype.key] = {}
        self.history[rtype.key] = deque()
        self.floor[rtype.key] = self.rv

    def unregister(self, group: str, version: str, plural: str) -> None:
        """Forget a type and its objects (as deleting a CRD does); its open watches are dropped."""
        key = (group, version, plural)
        if key not in self.types:
            return
        for watch in [w for w in self.watches if w.rtype.key == key]:
            self.watches.discard(watch)
            watch.queue.put_nowait(None)
        del self.types[key], self.objects[key], self.history[key], self.floor[key]

    def type_for(self, group: str, version: str, plural: str) -> ResourceType:
        rtype = self.types.get((group, version, plural))
        if rtype is None:
            gv = f"{group}/{version}" if group else version
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({plural} in {gv})")
        return rtype

    def type_of(self, api_version: str, kind: str) -> ResourceType:
        group, _, version = api_version.rpartition("/")
        for rtype in self.types.values():
            if rtype.group == group and rtype.version == version and rtype.kind == kind:
                return rtype
        raise ApiError(
            404,
            "NotFound",
            f'no matches for kind "{kind}" in version "{api_version}" (apply its CustomResourceDefinition first)',
        )

    # --- reads --------------------------------------------------------------------------------

    def get(self, rtype: ResourceType, namespace: str, name: str) -> Object:
        obj = self.objects[rtype.key].get((self._ns(rtype, namespace), name))
        if obj is None:
            raise not_found(rtype, name)
        return copy.deepcopy(obj)

    def list(
        self,
        rtype: ResourceType,
        namespace: str | None,
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
    ) -> tuple[list[Object], int, str]:
        """(items, resourceVersion, continue token) — items sorted by namespace and name."""
        try:
            labels, fields = label_matcher(label_selector), field_matcher(field_selector)
        except SelectorError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from None
        rv, after = self.rv, ("", "")
        if continue_token:
            try:
                state = json.loads(base64.urlsafe_b64decode(continue_token.encode()))
                rv, after = int(state["rv"]), (state["ns"], state["name"])
            except (ValueError, KeyError, TypeError):
                raise ApiError(400, "BadRequest", f"invalid continue token {continue_token!r}") from None
        items = []
        for key in sorted(self.objects[rtype.key]):
            if continue_token and key <= after:
                continue
            obj = self.objects[rtype.key][key]
            if namespace is not None and key[0] != namespace:
                continue
            if labels(obj.get("metadata", {}).get("labels") or {}) and fields(obj):
                items.append(copy.deepcopy(obj))
        next_token = ""
        if limit > 0 and len(items) > limit:
            items = items[:limit]
            last = items[-1]["metadata"]
            state = {"rv": rv, "ns": last.get("namespace", ""), "name": last["name"]}
            next_token = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
        return items, rv, next_token

    # --- writes -------------------------------------------------------------------------------

    def create(self, rtype: ResourceType, namespace: str, obj: Object, keep_status: bool = False) -> Object:
        obj = copy.deepcopy(obj)
        metadata = obj.setdefault("metadata", {})
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:5]
        name = metadata.get("name")
        if not name or not isinstance(name, str):
            raise ApiError(
                422, "Invalid", f"{rtype.kind}: metadata.name: Required value: name or generateName is required"
            )
        namespace = self._ns(rtype, namespace or metadata.get("namespace", ""))
        if rtype.namespaced:
            if metadata.get("namespace") not in (None, "", namespace):
                raise ApiError(
                    400,
                    "BadRequest",
                    f"the namespace of the object ({metadata['namespace']}) does not match the namespace on the "
                    f"request ({namespace})",
                )
            if ("", namespace) not in self.objects[("", "v1", "namespaces")]:
                raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')
            metadata["namespace"] = namespace
        else:
            metadata.pop("namespace", None)
        objects = self.objects[rtype.key]
        if (namespace, name) in objects:
            resource = f"{rtype.plural}.{rtype.group}" if rtype.group else rtype.plural
            raise ApiError(
                409,
                "AlreadyExists",
                f'{resource} "{name}" already exists',
                {"name": name, "group": rtype.group, "kind": rtype.plural},
            )
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = now_rfc3339()
        metadata.pop("deletionTimestamp", None)
        if rtype.status:
            metadata["generation"] = 1
            if not keep_status:
                obj.pop("status", None)
        if rtype.kind == "Pod" and not keep_status and rtype.group == "":
            obj["status"] = {"phase": "Pending"}
        if rtype.kind == "CustomResourceDefinition":
            self._install_crd(obj)
        self._commit(rtype, (namespace, name), obj, "ADDED", None)
        return copy.deepcopy(obj)

    def update(self, rtype: ResourceType, namespace: str, name: str, obj: Object, subresource: str = "") -> Object:
        key = (self._ns(rtype, namespace), name)
        current = self.objects[rtype.key].get(key)
        if current is None:
            raise not_found(rtype, name)
        obj = copy.deepcopy(obj)
        metadata = obj.setdefault("metadata", {})
        if metadata.get("name", name) != name:
            raise ApiError(
                400,
                "BadRequest",
                f"the name of the object ({metadata['name']}) does not match the name on the URL ({name})",
            )
        sent_rv = str(metadata.get("resourceVersion") or "")
        if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
            resource = f"{rtype.plural}.{rtype.group}" if rtype.group else rtype.plural
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; please apply '
                "your changes to the latest version and try again",
                {"name": name, "group": rtype.group, "kind": rtype.plural},
            )
        if subresource == "status":
            new = copy.deepcopy(current)
            if "status" in obj:
                new["status"] = obj["status"]
            else:
                new.pop("status", None)
        elif subresource:
            raise ApiError(404, "NotFound", f"subresource {subresource!r} is not served by kubesim")
        else:
            new = obj
            new["apiVersion"], new["kind"] = rtype.api_version, rtype.kind
            kept = ("uid", "creationTimestamp", "namespace", "deletionTimestamp", "deletionGracePeriodSeconds")
            for field_name in kept:
                if field_name in current["metadata"]:
                    metadata[field_name] = current["metadata"][field_name]
                else:
                    metadata.pop(field_name, None)
            metadata["name"] = name
            if rtype.status:
                if "status" in current:
                    new["status"] = current["status"]
                else:
                    new.pop("status", None)
                generation = int(current["metadata"].get("generation", 1))
                if new.get("spec") != current.get("spec"):
                    generation += 1
                metadata["generation"] = generation
            if rtype.kind == "CustomResourceDefinition":
                self._install_crd(new)
        if _same_content(new, current):
            return copy.deepcopy(current)  # a no-op write does not bump the resourceVersion
        self._commit(rtype, key, new, "MODIFIED", current)
        return copy.deepcopy(new)

    def patch(
        self, rtype: ResourceType, namespace: str, name: str, content_type: str, body: Any, subresource: str = ""
    ) -> Object:
        current = self.get(rtype, namespace, name)
        try:
            patched = apply_patch(content_type, current, body)
        except PatchError as exc:
            code = 415 if "content type" in str(exc) else 422
            raise ApiError(code, "UnsupportedMediaType" if code == 415 else "Invalid", str(exc)) from None
        if not isinstance(patched, dict):
            raise ApiError(422, "Invalid", "the patch does not produce an object")
        patched.setdefault("metadata", {})
        sent_rv = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
        patched["metadata"]["resourceVersion"] = sent_rv or current["metadata"]["resourceVersion"]
        return self.update(rtype, namespace, name, patched, subresource)

    def delete(self, rtype: ResourceType, namespace: str, name: str, grace_seconds: int | None = None) -> Object:
        key = (self._ns(rtype, namespace), name)
        current = self.objects[rtype.key].get(key)
        if current is None:
            raise not_found(rtype, name)
        grace = rtype.default_grace_seconds if grace_seconds is None else grace_seconds
        if rtype.kind == "Pod" and grace_seconds is None:
            grace = int((current.get("spec") or {}).get("terminationGracePeriodSeconds", grace))
        if grace > 0:
            if "deletionTimestamp" in current["metadata"]:
                return copy.deepcopy(current)
            terminating = copy.deepcopy(current)
            terminating["metadata"]["deletionTimestamp"] = now_rfc3339()
            terminating["metadata"]["deletionGracePeriodSeconds"] = grace
            self._commit(rtype, key, terminating, "MODIFIED", current)
            uid = current["metadata"]["uid"]
            try:
                asyncio.get_running_loop().call_later(grace, self._finish_delete, rtype, key, uid)
            except RuntimeError:
                self._finish_delete(rtype, key, uid)
            return copy.deepcopy(terminating)
        self._remove(rtype, key)
        return copy.deepcopy(current)

    def _finish_delete(self, rtype: ResourceType, key: ObjectKey, uid: str) -> None:
        current = self.objects.get(rtype.key, {}).get(key)
        if current is not None and current["metadata"].get("uid") == uid:
            self._remove(rtype, key)

    def _remove(self, rtype: ResourceType, key: ObjectKey) -> None:
        current = self.objects[rtype.key][key]
        final = copy.deepcopy(current)
        self._commit(rtype, key, final, "DELETED", None)
        if rtype.kind == "CustomResourceDefinition":
            for crd_type in types_from_crd(current):
                self.unregister(*crd_type.key)

    def _commit(self, rtype: ResourceType, key: ObjectKey, obj: Object, kind: str, old: Object | None) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        objects = self.objects[rtype.key]
        if kind == "DELETED":
            objects.pop(key, None)
        else:
            objects[key] = obj
        event = Event(self.rv, kind, copy.deepcopy(obj), old)
        history = self.history[rtype.key]
        history.append(event)
        while len(history) > self.history_limit:
            dropped = history.popleft()
            self.floor[rtype.key] = dropped.rv
        for watch in list(self.watches):
            if watch.rtype.key == rtype.key:
                watch.offer(event)

    def _install_crd(self, crd: Object) -> None:
        try:
            types = types_from_crd(crd)
        except (ValueError, KeyError) as exc:
            raise ApiError(422, "Invalid", str(exc)) from None
        for rtype in types:
            self.register(rtype)

    # --- watches ------------------------------------------------------------------------------

    def watch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        label_selector: str = "",
        field_selector: str = "",
        resource_version: str = "",
    ) -> Watch:
        try:
            watch = Watch(rtype, namespace, label_matcher(label_selector), field_matcher(field_selector))
        except SelectorError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from None
        if resource_version in ("", "0"):
            for key in sorted(self.objects[rtype.key]):
                obj = self.objects[rtype.key][key]
                if watch.selects(obj):
                    watch.queue.put_nowait(("ADDED", copy.deepcopy(obj)))
        else:
            try:
                since = int(resource_version)
            except ValueError:
                raise ApiError(400, "BadRequest", f"invalid resourceVersion {resource_version!r}") from None
            floor = self.floor[rtype.key]
            if since < floor:
                raise ApiError(410, "Expired", f"too old resource version: {since} ({floor})")
            for event in self.history[rtype.key]:
                if event.rv > since:
                    watch.offer(event)
        self.watches.add(watch)
        return watch

    def unwatch(self, watch: Watch) -> None:
        self.watches.discard(watch)

    def drop_watches(self, abrupt: bool = False) -> int:
        """End every open watch (clients must reconnect); returns how many there were."""
        dropped = list(self.watches)
        self.watches.clear()
        for watch in dropped:
            watch.abrupt = abrupt
            watch.queue.put_nowait(None)
        return len(dropped)

    def compact(self) -> None:
        """Forget the event history (as etcd compaction does): resuming from an older resourceVersion is 410."""
        for key in self.history:
            self.history[key].clear()
            self.floor[key] = self.rv

    # --- helpers ------------------------------------------------------------------------------

    def _ns(self, rtype: ResourceType, namespace: str) -> str:
        if not rtype.namespaced:
            return ""
        return namespace or "default"

    def dump(self, types: Iterable[ResourceType] | None = None) -> builtins.list[Object]:
        """Every stored object (for debugging a test)."""
        out: builtins.list[Object] = []
        for rtype in types or self.types.values():
            out.extend(copy.deepcopy(o) for o in self.objects[rtype.key].values())
        return out


def _without_version(obj: Object) -> Object:
    return {**obj, "metadata": {k: v for k, v in obj.get("metadata", {}).items() if k != "resourceVersion"}}


def _same_content(new: Object, current: Object) -> bool:
    return _without_version(new) == _without_version(current)
